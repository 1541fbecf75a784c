// soakload: the soak's order load (`bench.soak`, `make soak`), Go standard library only.
//
// It places -orders logical orders and stops. Order i belongs to customer i mod the number of
// customers (each with their own token, from -customers), goes on path i mod 3 (sync, Kafka,
// RabbitMQ) with its own Idempotency-Key (<run>-<i>), and is retried as the README tells
// clients to: after a 5xx, a refused or cut connection or a timeout, with the same key,
// backing off from 0.1 s to 2 s; after a 429, once its Retry-After has passed. An order ends
// accepted (201 sync, 202 async), out of stock (409), refused for good (any other 4xx, which
// would be a defect: the soak's requests are valid) or abandoned (its -deadline passed).
//
//	soakload -orders 20000 -c 48 -customers customers.tsv -run soak1 -scarce 7 -plenty 8,9 \
//	    -orders-url http://127.0.0.1:8081 -products-url http://127.0.0.1:8080 -out orders.tsv
//
// Every -reads orders, a worker also reads a page of GET /products (retried the same way).
//
// -out: one line per logical order at its end:
// "<i>\t<outcome>\t<order id>\t<user>\t<path>\t<product>\t<quantity>" (the id empty unless
// accepted). Progress: one JSON object per -progress on stdout (counts so far, and the
// interval's answers and latency percentiles), then a last one with "final": true.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var paths = []string{"sync", "kafka", "rabbitmq"}

type customer struct {
	user  int64
	token string
}

type config struct {
	orders      int64
	workers     int
	customers   []customer
	run         string
	scarce      int64
	plenty      []int64
	ordersURL   string
	productsURL string
	deadline    time.Duration
	timeout     time.Duration
	reads       int64
}

// window: what the last progress interval saw.
type window struct {
	mu        sync.Mutex
	latencies []time.Duration // of answered attempts (any status)
	ok        int64           // attempts answered 2xx or 409
	failed    int64           // 5xx, cut, timed out
	limited   int64           // 429
}

type counts struct {
	done, accepted, noStock, abandoned, other     atomic.Int64
	attempts, failed, limited, reads, readsFailed atomic.Int64
}

type soak struct {
	cfg    config
	client *http.Client
	next   atomic.Int64
	counts counts
	win    window
	outMu  sync.Mutex
	out    *bufio.Writer
}

func main() {
	var cfg config
	var customersPath, plenty, outPath string
	var progress time.Duration
	flag.Int64Var(&cfg.orders, "orders", 1000, "logical orders to place")
	flag.IntVar(&cfg.workers, "c", 48, "concurrent clients")
	flag.StringVar(&customersPath, "customers", "", "file of \"<user>\\t<token>\" lines")
	flag.StringVar(&cfg.run, "run", "soak", "this run's name: the prefix of every Idempotency-Key")
	flag.Int64Var(&cfg.scarce, "scarce", 0, "a product that runs out (every 10th order)")
	flag.StringVar(&plenty, "plenty", "", "comma-separated products that do not run out")
	flag.StringVar(&cfg.ordersURL, "orders-url", "http://127.0.0.1:8081", "the order service")
	flag.StringVar(&cfg.productsURL, "products-url", "http://127.0.0.1:8080", "the product service")
	flag.DurationVar(&cfg.deadline, "deadline", 300*time.Second, "an order is abandoned after this")
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "one attempt's limit")
	flag.Int64Var(&cfg.reads, "reads", 10, "a GET /products every this many orders (0: none)")
	flag.StringVar(&outPath, "out", "orders.tsv", "where each order's end is written")
	flag.DurationVar(&progress, "progress", time.Second, "progress every")
	flag.Parse()

	var err error
	if cfg.customers, err = readCustomers(customersPath); err != nil {
		fail("customers: %v", err)
	}
	for _, p := range strings.Split(plenty, ",") {
		id, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
		if err != nil {
			fail("-plenty: %v", err)
		}
		cfg.plenty = append(cfg.plenty, id)
	}
	file, err := os.Create(outPath)
	if err != nil {
		fail("-out: %v", err)
	}
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: cfg.timeout}).DialContext,
		MaxIdleConns:        2 * cfg.workers,
		MaxIdleConnsPerHost: cfg.workers,
		IdleConnTimeout:     30 * time.Second,
	}
	s := &soak{cfg: cfg, client: &http.Client{Transport: transport, Timeout: cfg.timeout}}
	s.out = bufio.NewWriterSize(file, 1<<16)

	started := time.Now()
	var wg sync.WaitGroup
	for range cfg.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.work()
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	ticker := time.NewTicker(progress)
	for running := true; running; {
		select {
		case <-ticker.C:
		case <-finished:
			running = false
		}
		s.report(os.Stdout, time.Since(started), !running)
	}
	s.outMu.Lock()
	if err := s.out.Flush(); err != nil {
		fail("-out: %v", err)
	}
	s.outMu.Unlock()
	if err := file.Close(); err != nil {
		fail("-out: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soakload: "+format+"\n", args...)
	os.Exit(2)
}

func readCustomers(path string) ([]customer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var found []customer
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		user, token, ok := strings.Cut(line, "\t")
		id, err := strconv.ParseInt(user, 10, 64)
		if !ok || err != nil || token == "" {
			return nil, fmt.Errorf("not \"<user>\\t<token>\": %.40q", line)
		}
		found = append(found, customer{id, token})
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("%s names no customer", path)
	}
	return found, nil
}

func (s *soak) work() {
	for {
		i := s.next.Add(1) - 1
		if i >= s.cfg.orders {
			return
		}
		s.order(i)
		if s.cfg.reads > 0 && i%s.cfg.reads == 0 {
			s.read(s.cfg.customers[i%int64(len(s.cfg.customers))])
		}
	}
}

func (s *soak) order(i int64) {
	who := s.cfg.customers[i%int64(len(s.cfg.customers))]
	path := paths[i%3]
	product := s.cfg.plenty[i%int64(len(s.cfg.plenty))]
	if i%10 == 0 {
		product = s.cfg.scarce
	}
	quantity := 1 + i%3
	url := s.cfg.ordersURL + "/orders/sync"
	if path != "sync" {
		url = s.cfg.ordersURL + "/orders/async/" + path
	}
	body := fmt.Sprintf(`{"user_id":%d,"product_id":%d,"quantity":%d}`, who.user, product, quantity)
	key := fmt.Sprintf("%s-%d", s.cfg.run, i)
	outcome, id := s.attempts(i, func() (*http.Request, error) {
		request, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		if err == nil {
			request.Header.Set("Content-Type", "application/json")
			request.Header.Set("Authorization", "Bearer "+who.token)
			request.Header.Set("Idempotency-Key", key)
		}
		return request, err
	}, path)
	switch outcome {
	case "accepted":
		s.counts.accepted.Add(1)
	case "no_stock":
		s.counts.noStock.Add(1)
	case "abandoned":
		s.counts.abandoned.Add(1)
	default:
		s.counts.other.Add(1)
	}
	s.counts.done.Add(1)
	line := fmt.Sprintf("%d\t%s\t%s\t%d\t%s\t%d\t%d\n", i, outcome, id, who.user, path, product, quantity)
	s.outMu.Lock()
	_, _ = s.out.WriteString(line)
	s.outMu.Unlock()
}

// attempts sends the request `build` makes until it ends: the outcome and, if accepted, the
// order's id.
func (s *soak) attempts(i int64, build func() (*http.Request, error), path string) (string, string) {
	accepted := http.StatusCreated
	if path != "sync" && path != "read" {
		accepted = http.StatusAccepted
	}
	if path == "read" {
		accepted = http.StatusOK
	}
	deadline := time.Now().Add(s.cfg.deadline)
	pause := 100 * time.Millisecond
	for {
		request, err := build()
		if err != nil {
			fail("request %d: %v", i, err)
		}
		began := time.Now()
		status, body, retryAfter := s.send(request)
		took := time.Since(began)
		if path != "read" {
			s.counts.attempts.Add(1)
		}
		wait := pause
		switch {
		case status == accepted:
			s.answered(took, "ok")
			if path == "read" {
				return "accepted", ""
			}
			var answer struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(body, &answer) != nil || answer.ID == "" {
				return "other", ""
			}
			return "accepted", answer.ID
		case status == http.StatusConflict && path != "read":
			s.answered(took, "ok")
			return "no_stock", ""
		case status == http.StatusTooManyRequests:
			s.answered(took, "limited")
			wait = retryAfter
		case status == 0 || status >= 500:
			s.answered(took, "failed")
			if path != "read" {
				s.counts.failed.Add(1)
			}
			pause = min(2*time.Second, 2*pause)
		default:
			s.answered(took, "ok")
			fmt.Fprintf(os.Stderr, "soakload: order %d on %s answered %d: %.200s\n", i, path, status, body)
			return "other", ""
		}
		if time.Now().Add(wait).After(deadline) {
			return "abandoned", ""
		}
		time.Sleep(wait)
	}
}

// send: the status (0 when no answer came), the body, and the Retry-After of a 429 (1 s if
// it names none).
func (s *soak) send(request *http.Request) (int, []byte, time.Duration) {
	response, err := s.client.Do(request)
	if err != nil {
		return 0, nil, 0
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return 0, nil, 0
	}
	retryAfter := time.Second
	if seconds, err := strconv.Atoi(response.Header.Get("Retry-After")); err == nil && seconds > 0 {
		retryAfter = time.Duration(seconds) * time.Second
	}
	return response.StatusCode, body, retryAfter
}

func (s *soak) read(who customer) {
	outcome, _ := s.attempts(-1, func() (*http.Request, error) {
		request, err := http.NewRequest(http.MethodGet, s.cfg.productsURL+"/products?limit=20", nil)
		if err == nil {
			request.Header.Set("Authorization", "Bearer "+who.token)
		}
		return request, err
	}, "read")
	s.counts.reads.Add(1)
	if outcome != "accepted" {
		s.counts.readsFailed.Add(1)
	}
}

func (s *soak) answered(took time.Duration, how string) {
	s.win.mu.Lock()
	defer s.win.mu.Unlock()
	switch how {
	case "ok":
		s.win.ok++
		s.win.latencies = append(s.win.latencies, took)
	case "limited":
		s.win.limited++
		s.win.latencies = append(s.win.latencies, took)
		s.counts.limited.Add(1)
	default:
		s.win.failed++
	}
}

func (s *soak) report(w io.Writer, elapsed time.Duration, final bool) {
	s.win.mu.Lock()
	latencies, ok, failed, limited := s.win.latencies, s.win.ok, s.win.failed, s.win.limited
	s.win.latencies, s.win.ok, s.win.failed, s.win.limited = nil, 0, 0, 0
	s.win.mu.Unlock()
	slices.Sort(latencies)
	c := &s.counts
	line := map[string]any{
		"t":              elapsed.Seconds(),
		"done":           c.done.Load(),
		"accepted":       c.accepted.Load(),
		"no_stock":       c.noStock.Load(),
		"abandoned":      c.abandoned.Load(),
		"other":          c.other.Load(),
		"attempts":       c.attempts.Load(),
		"failed":         c.failed.Load(),
		"limited":        c.limited.Load(),
		"reads":          c.reads.Load(),
		"reads_failed":   c.readsFailed.Load(),
		"window_ok":      ok,
		"window_failed":  failed,
		"window_limited": limited,
		"p50_ms":         percentile(latencies, 0.50),
		"p99_ms":         percentile(latencies, 0.99),
		"final":          final,
	}
	var buffer bytes.Buffer
	encoder := json.NewEncoder(&buffer)
	if err := encoder.Encode(line); err != nil {
		fail("progress: %v", err)
	}
	_, _ = w.Write(buffer.Bytes())
}

func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	index := int(q * float64(len(sorted)-1))
	return float64(sorted[index].Microseconds()) / 1000
}
