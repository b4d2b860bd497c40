package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/chapper/chapper/services/server"
)

// devCORSOrigins are the origins chapper dev allows over gRPC-web: a page
// served from any local port.
const devCORSOrigins = "http://localhost:*,http://127.0.0.1:*,https://localhost:*,https://127.0.0.1:*"

// devTLS prepares `chapper dev -tls`: unless a certificate is configured,
// a self-signed one for localhost and 127.0.0.1 is kept under
// <dev.dir>/tls/ (created on first use).
func devTLS(on bool, c *server.Config, devDir string, stderr io.Writer) error {
	if !on || c.TLSCert != "" {
		return nil
	}
	dir, err := filepath.Abs(filepath.Join(devDir, "tls"))
	if err != nil {
		return fmt.Errorf("locating the dev TLS directory: %w", err)
	}
	c.TLSCert, c.TLSKey = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	_, certErr := os.Stat(c.TLSCert)
	_, keyErr := os.Stat(c.TLSKey)
	if certErr == nil && keyErr == nil {
		return nil
	}
	if !errors.Is(certErr, os.ErrNotExist) && certErr != nil {
		return fmt.Errorf("reading the dev TLS certificate: %w", certErr)
	}
	if err := server.WriteSelfSigned(c.TLSCert, c.TLSKey, []string{"localhost", "127.0.0.1"}); err != nil {
		return fmt.Errorf("creating the dev TLS certificate: %w", err)
	}
	fmt.Fprintf(stderr, "created a self-signed TLS certificate %s (trust it in clients: grpcurl -cacert %s)\n", c.TLSCert, c.TLSCert)
	return nil
}
