package cli

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/castellan-dev/castellan/internal/connlimit"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/ca"
	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/attest/service"
)

var attestServeCmd = &Command{
	Name:    "attest serve",
	Usage:   "attest serve --policy policy.toml --measurements measurements.toml [flags]",
	Summary: "run the attestation service that certifies keeps",
	Help: `Serves the attestation API over HTTPS: keeps ask for a challenge, send
their hardware evidence with a CSR, and get a short-lived certificate whose
extension carries the checked claims, or a refusal naming the failed check.

The service's CA is generated on first start and kept in the state directory
(ca.pem, and ca-key.pem with mode 0600), unless --ca-cert and --ca-key name
files. Relying parties trust ca.pem ('castellan verify --ca ca.pem'); the
service's own TLS certificate is issued by the same CA at each start.

The policy and the measurement database are reloaded on SIGHUP and when
either file changes; a bad edit is reported and the old version stays in
force. Every decision goes to the audit log (--database).

Challenge nonces are sealed with the key in --nonce-key (made if absent), so
issuing one stores nothing; used nonces are kept in the audit database until
they expire. Replicas that share the CA, the nonce key, one PostgreSQL
--database and the policy files act as one service.`,
}

type attestServeFlags struct {
	listen, policy, measurements, database, caCert, caKey, stateDir, hostnames, nonceKey *string
	reload                                                                               *time.Duration
	collateralDir, pccs                                                                  *string
	offline                                                                              *bool
	clientRate                                                                           *float64
	clientBurst, clientConns                                                             *int
	auditRetain                                                                          *time.Duration
}

func addAttestServeFlags(fs *flag.FlagSet) *attestServeFlags {
	return &attestServeFlags{
		listen:        fs.String("listen", "127.0.0.1:8443", "address to serve HTTPS on"),
		policy:        fs.String("policy", "", "policy file (TOML, required)"),
		measurements:  fs.String("measurements", "", "measurement database (TOML, required)"),
		database:      fs.String("database", "", "audit log: sqlite:PATH or postgres://... (default sqlite:STATE-DIR/audit.db)"),
		caCert:        fs.String("ca-cert", "", "CA certificate (PEM), with --ca-key, instead of the state directory's"),
		caKey:         fs.String("ca-key", "", "CA private key (PEM, mode 0600)"),
		stateDir:      fs.String("state-dir", "", "where the CA and the default audit log live (default CONFIG-DIR/castellan/attest)"),
		hostnames:     fs.String("hostnames", "", "extra comma-separated names for the service's TLS certificate"),
		nonceKey:      fs.String("nonce-key", "", "file of the key that seals challenge nonces, created (0600) if absent; replicas share it (default STATE-DIR/nonce-key)"),
		reload:        fs.Duration("reload-interval", 2*time.Second, "how often to check the policy files for changes"),
		collateralDir: fs.String("collateral-dir", "", "cache of vendor collateral (AMD VCEKs and CRLs, Intel TCB info, QE identity, CRLs), and the folder --offline reads (default STATE-DIR/collateral)"),
		offline:       fs.Bool("offline", false, "read vendor collateral only from --collateral-dir, never from AMD's or Intel's servers"),
		pccs:          fs.String("pccs", "", "fetch Intel collateral from this PCCS (https://host:port) instead of Intel's PCS"),
		clientRate:    fs.Float64("client-rate", service.DefaultClientRate, "requests a second allowed from one client address (IPv6: one /64); 0 turns the limit off (behind a proxy that hides client addresses)"),
		clientBurst:   fs.Int("client-burst", service.DefaultClientBurst, "requests at once allowed from one client address"),
		clientConns:   fs.Int("client-conns", connlimit.DefaultPerClient, "connections one client address may hold open at once (IPv6: one /64); 0 turns the limit off (behind a proxy that hides client addresses)"),
		auditRetain:   fs.Duration("audit-retain", 0, "delete audit decisions older than this (e.g. 2160h for 90 days), checked hourly; 0 keeps them all"),
	}
}

// auditPruneEvery is how often the audit log is pruned by --audit-retain.
const auditPruneEvery = time.Hour

// pruneAudit deletes the audit log's decisions older than retain now and
// every auditPruneEvery until ctx ends. Replicas on one database each
// prune; a delete that finds nothing costs one indexed read.
func pruneAudit(ctx context.Context, e *Env, log *audit.DB, retain time.Duration) {
	for {
		before := time.Now().Add(-retain)
		n, err := log.Prune(ctx, before)
		switch {
		case err != nil && ctx.Err() == nil:
			e.Warningf("%v (retried in %v)", err, auditPruneEvery)
		case n > 0:
			e.Infof("audit log: deleted %d decisions from before %s (--audit-retain %v)", n, before.UTC().Format(time.RFC3339), retain)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(auditPruneEvery):
		}
	}
}

// defaultStateDir is $CASTELLAN_CONFIG_DIR/attest, else
// os.UserConfigDir()/castellan/attest.
func defaultStateDir() (string, error) {
	if d := os.Getenv("CASTELLAN_CONFIG_DIR"); d != "" {
		return filepath.Join(d, "attest"), nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no config directory for the state (give --state-dir): %w", err)
	}
	return filepath.Join(d, "castellan", "attest"), nil
}

func init() {
	Register(attestServeCmd)
	DefineFlags(attestServeCmd.Name, func(fs *flag.FlagSet) { addAttestServeFlags(fs) })
	attestServeCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(attestServeCmd)
		f := addAttestServeFlags(fs)
		pos, status, ok := e.Parse(attestServeCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 0 {
			return e.Usagef("attest serve: takes no arguments, got %q", pos[0])
		}
		if *f.policy == "" || *f.measurements == "" {
			return e.Usagef("attest serve: --policy and --measurements are required")
		}
		if (*f.caCert == "") != (*f.caKey == "") {
			return e.Usagef("attest serve: give both --ca-cert and --ca-key, or neither")
		}
		if r := *f.clientRate; r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
			return e.Usagef("--client-rate: %v is not a number of requests a second (0 turns the limit off)", r)
		}
		if *f.clientBurst < 1 {
			return e.Usagef("--client-burst: %d is less than 1", *f.clientBurst)
		}
		if *f.clientConns < 0 {
			return e.Usagef("--client-conns: %d is not a number of connections (0 turns the limit off)", *f.clientConns)
		}
		if r := *f.auditRetain; r < 0 || r > 0 && r < time.Hour {
			return e.Usagef("--audit-retain: %v is not 0 (keep all) or at least 1h", r)
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return serveAttest(ctx, e, f)
	}
}

func serveAttest(ctx context.Context, e *Env, f *attestServeFlags) int {
	store, err := policy.Open(*f.policy, *f.measurements)
	if err != nil {
		return e.Errorf("%v", err)
	}
	stateDir := *f.stateDir
	if stateDir == "" {
		if stateDir, err = defaultStateDir(); err != nil {
			return e.Errorf("%v", err)
		}
	}
	var authority *ca.CA
	caPath := *f.caCert
	if caPath != "" {
		authority, err = ca.Load(*f.caCert, *f.caKey)
	} else {
		authority, err = ca.LoadOrCreate(stateDir)
		caPath = filepath.Join(stateDir, ca.CertFile)
	}
	if err != nil {
		return e.Errorf("%v", err)
	}
	db := *f.database
	if db == "" {
		db = "sqlite:" + filepath.Join(stateDir, "audit.db")
	}
	log, err := audit.Open(ctx, db)
	if err != nil {
		return e.Errorf("%v", err)
	}
	defer log.Close()
	nonceKeyFile := *f.nonceKey
	if nonceKeyFile == "" {
		nonceKeyFile = filepath.Join(stateDir, "nonce-key")
	}
	nonceKey, err := service.LoadOrCreateNonceKey(nonceKeyFile)
	if err != nil {
		return e.Errorf("--nonce-key: %v", err)
	}

	src, err := collateralSource(stateDir, f)
	if err != nil {
		return e.Errorf("%v", err)
	}
	if c, ok := src.(*collateral.Cache); ok && c.Upstream == nil {
		e.Infof("vendor collateral: offline, from %s", c.Dir)
	} else if ok {
		e.Infof("vendor collateral: fetched from AMD and Intel as needed, cached in %s", c.Dir)
	}
	svc, err := service.New(service.Config{
		Collateral: src,
		NonceKey:   nonceKey,
		Build:      "castellan " + Version,
		// 0 on the command line turns the limit off; in Config, -1 does.
		ClientRate:  cmp.Or(*f.clientRate, -1),
		ClientBurst: *f.clientBurst,
		UsedNonces:  log,
		Policy:      store,
		CA:          authority,
		Audit:       log,
		Logf:        func(format string, a ...any) { e.Warningf(format, a...) },
		Decided: func(d audit.Decision) {
			switch {
			case d.Accepted && d.Package == "kbs attest":
				e.Infof("kbs session for %s: %s%s %s", d.Remote, d.Platform, simTag(d.Simulated), d.WorkloadDigest)
			case d.Accepted && strings.HasPrefix(d.Package, "kbs://"):
				e.Infof("released %s to %s: %s%s %s", d.Package, d.Remote, d.Platform, simTag(d.Simulated), d.WorkloadDigest)
			case d.Accepted:
				e.Infof("issued %s to %s: %s%s %s", d.Serial, d.Remote, d.Platform, simTag(d.Simulated), d.WorkloadDigest)
			default:
				e.Infof("refused %s (%s): %s", d.Remote, d.Check, d.Reason)
			}
		},
	})
	if err != nil {
		return e.Errorf("%v", err)
	}
	ln, err := net.Listen("tcp", *f.listen)
	if err != nil {
		return e.Errorf("--listen: %v", err)
	}
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, _, err := net.SplitHostPort(*f.listen); err == nil && h != "" && !net.ParseIP(h).IsUnspecified() {
		hosts = append(hosts, h)
	} else if name, err := os.Hostname(); err == nil {
		hosts = append(hosts, name)
	}
	for _, h := range strings.Split(*f.hostnames, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	tlsCert, err := authority.ServerCertificate(hosts, 90*24*time.Hour)
	if err != nil {
		ln.Close()
		return e.Errorf("%v", err)
	}
	srv := &http.Server{
		Handler:           svc,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{*tlsCert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		// The server's own messages go through the service's logging; port
		// probes ("TLS handshake error ...: EOF") become one short line a
		// minute at most.
		ErrorLog: service.ErrorLog(e.Warningf, e.Infof),
	}

	// Reload on SIGHUP and on change.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if changed, err := store.Reload(); err != nil {
					e.Warningf("reload: %v (the previous policy stays in force)", err)
				} else if changed {
					e.Infof("reloaded %s and %s", *f.policy, *f.measurements)
				} else {
					e.Infof("reload: no change")
				}
			}
		}
	}()
	go store.Watch(ctx, *f.reload, func(err error) {
		if err != nil {
			e.Warningf("reload: %v (the previous policy stays in force)", err)
		} else {
			e.Infof("reloaded %s and %s", *f.policy, *f.measurements)
		}
	})

	if *f.auditRetain > 0 {
		go pruneAudit(ctx, e, log, *f.auditRetain)
	}
	e.Infof("attestation service on https://%s (CA %s, audit log %s)", ln.Addr(), caPath, redactDSN(db))
	if *f.clientRate > 0 {
		e.Infof("each client address: at most %g requests a second, bursts of %d (--client-rate, --client-burst)", *f.clientRate, *f.clientBurst)
	} else {
		e.Infof("no per-client rate limit (--client-rate 0)")
	}
	if *f.clientConns > 0 {
		e.Infof("each client address: at most %d connections open at once (--client-conns)", *f.clientConns)
	} else {
		e.Infof("no per-client connection limit (--client-conns 0)")
	}
	errc := make(chan error, 1)
	if *f.clientConns > 0 {
		ln = connlimit.Listen(ln, *f.clientConns, e.Warningf)
	}
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return e.Errorf("attestation service: %v", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return e.Errorf("attestation service: shutting down: %v", err)
	}
	e.Infof("attestation service stopped")
	return ExitOK
}

func simTag(sim bool) string {
	if sim {
		return " (simulated)"
	}
	return ""
}

// redactDSN hides a password in a postgres:// DSN for printing.
func redactDSN(dsn string) string {
	if i := strings.Index(dsn, "://"); i >= 0 {
		if at := strings.LastIndex(dsn, "@"); at > i {
			userinfo := dsn[i+3 : at]
			if c := strings.Index(userinfo, ":"); c >= 0 {
				return dsn[:i+3] + userinfo[:c] + ":***" + dsn[at:]
			}
		}
	}
	return dsn
}

// collateralSource is where the service gets vendor collateral: the
// folder alone with --offline, else the network (Intel's PCS or a PCCS,
// AMD's KDS) behind the folder as a cache and a budget of fetches (a VCEK
// is fetched before it can check the report). A request waits at most
// about a minute for a rate-limited server.
func collateralSource(stateDir string, f *attestServeFlags) (collateral.Source, error) {
	dir := *f.collateralDir
	if dir == "" {
		dir = filepath.Join(stateDir, "collateral")
	}
	if *f.offline {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--offline: collateral folder %s: not a folder (fill it on a machine with network, or copy a cache)", dir)
		}
		if *f.pccs != "" {
			return nil, fmt.Errorf("--offline and --pccs: give one")
		}
		return collateral.Offline(dir), nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("collateral folder: %w", err)
	}
	h := &collateral.HTTP{Attempts: 3, MaxDelay: 20 * time.Second}
	if *f.pccs != "" {
		if !strings.HasPrefix(*f.pccs, "https://") {
			return nil, fmt.Errorf("--pccs %q: want an https:// URL", *f.pccs)
		}
		h.Rewrite = collateral.PCCS(*f.pccs)
	}
	return &collateral.Cache{Dir: dir, Upstream: &collateral.Limit{Source: h}}, nil
}

// clientCollateral is where a client verifying evidence with the owner's
// policy (deploy --policy) gets vendor collateral: the network behind a
// cache in os.UserCacheDir()/castellan/collateral, or the network alone if
// there is no cache folder. Simulated evidence never reaches it: its
// collateral comes from the folder beside the simulation roots.
func clientCollateral() collateral.Source {
	up := &collateral.Limit{Source: &collateral.HTTP{Attempts: 3, MaxDelay: 20 * time.Second}}
	base, err := os.UserCacheDir()
	if err != nil {
		return up
	}
	return &collateral.Cache{Dir: filepath.Join(base, "castellan", "collateral"), Upstream: up}
}
