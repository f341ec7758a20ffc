// Command loadgen sends one request body at a fixed rate (open loop) to an HTTPS URL and prints
// the client-side latency of every request as JSON; used by e2e/bench_injection.py.
//
// Open loop: request i is due at start + i/rate whatever happened to earlier ones, and its latency
// is measured from when it was due, so a stalled server shows up in the tail instead of quietly
// lowering the rate (no coordinated omission). Standard library only, so it builds from the Go
// toolchain alone: go build -o target/loadgen e2e/loadgen/main.go
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"
)

type result struct {
	Sent       int       `json:"sent"`
	Errors     int       `json:"errors"`
	FirstError string    `json:"firstError,omitempty"`
	Statuses   any       `json:"statuses"`
	Seconds    float64   `json:"seconds"`
	Rate       float64   `json:"achievedRate"`
	LatencyMs  []float64 `json:"latencyMs"`
}

func main() {
	url := flag.String("url", "", "HTTPS URL to POST to")
	bodyFile := flag.String("body", "", "file with the request body")
	contentType := flag.String("content-type", "application/json", "Content-Type of the body")
	rate := flag.Float64("rate", 200, "requests per second")
	duration := flag.Duration("duration", 30*time.Second, "how long to send")
	caFile := flag.String("ca", "", "PEM CA bundle for the server")
	certFile := flag.String("cert", "", "PEM client certificate (optional)")
	keyFile := flag.String("key", "", "PEM client key (optional)")
	workers := flag.Int("workers", 32, "concurrent requests at most (keep-alive connections)")
	flag.Parse()

	body, err := os.ReadFile(*bodyFile)
	check(err)
	tlsConfig := &tls.Config{}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		check(err)
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			check(fmt.Errorf("no certificate in %s", *caFile))
		}
		tlsConfig.RootCAs = pool
	}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		check(err)
		tlsConfig.Certificates = []tls.Certificate{pair}
	}
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     tlsConfig,
			MaxIdleConns:        *workers,
			MaxIdleConnsPerHost: *workers,
			ForceAttemptHTTP2:   false,
			TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1
		},
	}

	send := func(due time.Time) (float64, int, error) {
		req, err := http.NewRequest(http.MethodPost, *url, bytes.NewReader(body))
		if err != nil {
			return 0, 0, err
		}
		req.Header.Set("Content-Type", *contentType)
		resp, err := client.Do(req)
		if err != nil {
			return 0, 0, err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return float64(time.Since(due).Nanoseconds()) / 1e6, resp.StatusCode, err
	}
	// Warm the connections (TLS handshakes) before the clock starts.
	for i := 0; i < 4; i++ {
		send(time.Now())
	}

	total := int(*rate * duration.Seconds())
	interval := time.Duration(float64(time.Second) / *rate)
	due := make(chan time.Time, total)
	var mu sync.Mutex
	res := result{LatencyMs: make([]float64, 0, total)}
	statuses := map[int]int{}
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for at := range due {
				ms, status, err := send(at)
				mu.Lock()
				res.Sent++
				if err != nil || status/100 != 2 {
					res.Errors++
					if res.FirstError == "" {
						res.FirstError = fmt.Sprintf("status %d: %v", status, err)
					}
				}
				if err == nil {
					statuses[status]++
					res.LatencyMs = append(res.LatencyMs, ms)
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := 0; i < total; i++ {
		at := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(at))
		due <- at
	}
	close(due)
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Rate = float64(res.Sent) / res.Seconds
	res.Statuses = statuses
	sort.Float64s(res.LatencyMs)
	check(json.NewEncoder(os.Stdout).Encode(res))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
}
