module soakload

go 1.22
