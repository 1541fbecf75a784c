"""The composition roots: which adapters each service process gets, from the settings; the `shop`
command; the consumer process."""
