module sandboxguest

go 1.19
