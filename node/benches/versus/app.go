// The versus bench's Go service: `app PORT` (built by the bench with the standard library only,
// GO111MODULE=off), GET / answers. Bare only: the OpenTelemetry Go SDK (otelhttp) is a Go module
// this machine cannot fetch (no Go module proxy among its registries).
package main

import (
	"net/http"
	"os"
)

func main() {
	body := []byte("hello from go\n")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	if err := http.ListenAndServe("127.0.0.1:"+os.Args[1], nil); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
