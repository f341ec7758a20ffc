// Command refhook is the reference point of e2e/bench_injection.py: a mutating webhook that does
// no work of its own. It answers every AdmissionReview with a patch fixed at start-up (the patch
// vaultkeeper-webhook returned for the benchmark's Pod), so the API server's timing of it is what
// calling a webhook and applying that patch costs the API server on this machine, with nothing of
// the webhook's in it. The benchmark compares vaultkeeper-webhook against it.
//
// Standard library only, like e2e/loadgen: go build -o target/refhook e2e/refhook/main.go
package main

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	certFile := flag.String("cert", "", "PEM serving certificate")
	keyFile := flag.String("key", "", "PEM serving key")
	patchFile := flag.String("patch", "", "file with the JSON patch to answer with")
	http2 := flag.Bool("http2", false, "offer HTTP/2 as well as HTTP/1.1")
	flag.Parse()

	patch, err := os.ReadFile(*patchFile)
	check(err)
	// An empty file: allowed without a patch (what vaultkeeper-webhook answers a Pod not opted in).
	patchFields := ""
	if len(patch) > 0 {
		patchFields = fmt.Sprintf(`,"patchType":"JSONPatch","patch":%q`, base64.StdEncoding.EncodeToString(patch))
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("POST /mutate", func(w http.ResponseWriter, r *http.Request) {
		var review struct {
			APIVersion string `json:"apiVersion"`
			Request    struct {
				UID string `json:"uid"`
			} `json:"request"`
		}
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"apiVersion":%q,"kind":"AdmissionReview","response":{"uid":%q,"allowed":true%s}}`,
			review.APIVersion, review.Request.UID, patchFields)
	})
	server := &http.Server{Addr: *addr, Handler: mux}
	if !*http2 {
		server.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	check(server.ListenAndServeTLS(*certFile, *keyFile))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "refhook:", err)
		os.Exit(2)
	}
}
