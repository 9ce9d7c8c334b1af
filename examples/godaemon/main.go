// Command godaemon is a warren binary with a Go service compiled in:
//
//	go run ./examples/godaemon daemon start -c examples/godaemon/warren.yaml
//	warren request /billing/quote '{"items": 3, "unit_cents": 250}'
//
// It serves /billing/quote and /billing/get_currency from the Go type below,
// next to the Python plugin the config also names.
package main

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/warrenrpc/warren/daemon"
	"github.com/warrenrpc/warren/daemon/daemonmain"
)

// billing is the actor: its exported methods are served as /billing/...
type billing struct {
	Currency string `json:"currency"`
	TaxPct   int    `json:"tax_pct"`
}

type order struct {
	Items     int `json:"items"`
	UnitCents int `json:"unit_cents"`
}

type quote struct {
	Cents    int    `json:"cents"`
	Currency string `json:"currency"`
}

// Quote prices an order, tax included.
func (b *billing) Quote(ctx context.Context, o order) (quote, error) {
	if o.Items <= 0 || o.UnitCents < 0 {
		return quote{}, errors.New("want items > 0 and unit_cents >= 0")
	}
	net := o.Items * o.UnitCents
	return quote{Cents: net + net*b.TaxPct/100, Currency: b.Currency}, nil
}

// GetCurrency is served as /billing/get_currency.
func (b *billing) GetCurrency(ctx context.Context) (string, error) { return b.Currency, nil }

// newBilling builds the actor from its config section.
func newBilling(env daemon.Env) (any, error) {
	b := &billing{Currency: "EUR"}
	if err := json.Unmarshal(env.Config, b); err != nil {
		return nil, err
	}
	env.Log.Info("billing ready", "currency", b.Currency, "daemon", env.Identity)
	return b, nil
}

func main() {
	daemonmain.Main(daemon.Service("billing", newBilling))
}
