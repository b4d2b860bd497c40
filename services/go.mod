module github.com/chapper/chapper/services

go 1.26.0
