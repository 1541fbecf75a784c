module shopload

go 1.22
