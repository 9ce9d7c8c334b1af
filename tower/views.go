package tower

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/warrenrpc/warren/mapper"
)

// maxShown bounds the text of one remote value on the page (a status, a
// result, a dead letter's body): more is cut, and says so.
const maxShown = 64 << 10

type agentsView struct {
	Count  int
	Agents []agentRow
}

type agentRow struct {
	Identity string
	Tags     []string
	Services []serviceRef
	Status   string
	Chart    chart
	LastSeen string // "3s ago"
	Stale    bool   // more than two ping intervals since its latest heartbeat
	Ping     string
	Uptime   string
	InFlight string // "" when the agent does not report it
	Handled  string
}

type serviceRef struct {
	Path     string
	Inactive bool
}

// chart is a status chart as inline SVG: a polyline in a W×H box.
type chart struct {
	W, H     int
	Points   string // "x,y x,y ..."
	Min, Max string
	Span     string
	Empty    bool // no numeric status to draw
}

const chartW, chartH = 120, 28

func (t *Tower) agentsView(agents []mapper.AgentInfo, now time.Time) agentsView {
	v := agentsView{Count: len(agents), Agents: make([]agentRow, 0, len(agents))}
	for _, a := range agents {
		row := agentRow{
			Identity: a.Identity,
			Tags:     a.Tags,
			Status:   shorten(jsonText(a.Status), 200),
			Chart:    t.chart(a.Identity),
			LastSeen: ago(now.Sub(a.LastSeen)),
			Stale:    a.PingInterval > 0 && now.Sub(a.LastSeen) > 2*a.PingInterval,
			Ping:     a.PingInterval.String(),
			InFlight: countText(a.InFlight),
			Handled:  countText(a.Handled),
		}
		if !a.Started.IsZero() {
			row.Uptime = strings.TrimSuffix(ago(now.Sub(a.Started)), " ago")
		}
		for _, p := range a.Services {
			row.Services = append(row.Services, serviceRef{Path: p, Inactive: slices.Contains(a.Inactive, p)})
		}
		v.Agents = append(v.Agents, row)
	}
	return v
}

func (t *Tower) chart(id string) chart {
	c := chart{W: chartW, H: chartH, Span: t.cfg.History.String()}
	h := t.state.history(id)
	var nums []point
	for _, p := range h {
		if p.ok {
			nums = append(nums, p)
		}
	}
	if len(nums) == 0 {
		c.Empty = true
		return c
	}
	lo, hi := nums[0].value, nums[0].value
	for _, p := range nums {
		lo, hi = min(lo, p.value), max(hi, p.value)
	}
	if lo > 0 {
		lo = 0 // loads read best from zero
	}
	rng := hi - lo
	if rng == 0 {
		rng = 1
	}
	if len(nums) == 1 {
		nums = append(nums, nums[0]) // one sample: a flat line
		nums[0].at = nums[0].at.Add(-time.Second)
	}
	// The x axis spans the history kept, up to the chart's span: a young
	// agent's chart is drawn across the box rather than in its corner.
	end := nums[len(nums)-1].at
	span := end.Sub(nums[0].at).Seconds()
	var b strings.Builder
	for i, p := range nums {
		x := float64(chartW) * (1 - end.Sub(p.at).Seconds()/span)
		y := float64(chartH-2) - (p.value-lo)/rng*float64(chartH-4)
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.1f,%.1f", max(x, 0), y)
	}
	c.Points = b.String()
	c.Min = strconv.FormatFloat(lo, 'g', 4, 64)
	c.Max = strconv.FormatFloat(hi, 'g', 4, 64)
	return c
}

type servicesView struct {
	Services []serviceRow
	Asked    bool   // the fabric was asked STATS at least once
	Every    string // how often it is asked
}

type serviceRow struct {
	Path      string
	Agents    []string
	Inactive  []string
	Seen      bool
	Total     int64
	Errors    int64
	Rate      string
	ErrorRate string
	Mean      string
	P95       string
	// The fabric-wide figures, from discovery STATS: totals since each
	// serving agent started, and rates since the previous STATS.
	Fabric     bool // some agent answered STATS for the path
	FabTotal   int64
	FabErrors  int64
	FabRate    string // "" until two answers came
	FabErrRate string
	FabMean    string // over the last interval, else since each agent started
}

func (t *Tower) servicesView(agents []mapper.AgentInfo, now time.Time) servicesView {
	by := map[string]*serviceRow{}
	row := func(p string) *serviceRow {
		r := by[p]
		if r == nil {
			r = &serviceRow{Path: p}
			by[p] = r
		}
		return r
	}
	for _, a := range agents {
		for _, p := range a.Services {
			r := row(p)
			if slices.Contains(a.Inactive, p) {
				r.Inactive = append(r.Inactive, a.Identity)
			} else {
				r.Agents = append(r.Agents, a.Identity)
			}
		}
	}
	for _, p := range t.state.paths() {
		row(p)
	}
	v := servicesView{Asked: t.fabric.wasAsked(), Every: t.cfg.Stats.String()}
	for _, p := range slices.Sorted(maps.Keys(by)) {
		r := by[p]
		if f, ok := t.fabric.summary(p); ok {
			r.Fabric, r.FabTotal, r.FabErrors = true, f.Requests, f.Errors
			r.FabMean = roundDuration(f.Mean)
			if f.Rated {
				r.FabRate = strconv.FormatFloat(f.Rate, 'f', 2, 64)
				r.FabErrRate = strconv.FormatFloat(100*f.ErrorRate, 'f', 1, 64) + "%"
				if f.RecentMean > 0 {
					r.FabMean = roundDuration(f.RecentMean)
				}
			}
		}
		s := t.state.summary(p, now)
		r.Seen, r.Total, r.Errors = s.Seen, s.Total, s.Errors
		if s.Seen {
			r.Rate = strconv.FormatFloat(s.Rate, 'f', 2, 64)
			r.ErrorRate = strconv.FormatFloat(100*s.ErrorRate, 'f', 1, 64) + "%"
			r.Mean = roundDuration(s.Mean)
			r.P95 = roundDuration(s.P95)
		}
		v.Services = append(v.Services, *r)
	}
	return v
}

type eventsView struct {
	Events []eventRow
}

type eventRow struct {
	Time     string
	Kind     string
	Identity string
	Services string
}

func (t *Tower) eventsView(now time.Time) eventsView {
	var v eventsView
	for _, e := range t.state.recentEvents() {
		v.Events = append(v.Events, eventRow{
			Time: e.At.UTC().Format("15:04:05"), Kind: e.Kind, Identity: e.Identity,
			Services: shorten(strings.Join(e.Services, " "), 200),
		})
	}
	return v
}

// jsonText shows a decoded JSON value as JSON.
// json.Marshal's HTML escapes (\u003c) are not needed: html/template
// escapes the text for the page.
func jsonText(v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// prettyJSON indents JSON text; other bytes are shown as a quoted string.
func prettyJSON(raw []byte) string {
	if len(raw) == 0 {
		return ""
	}
	if json.Valid(raw) {
		var b bytes.Buffer
		if err := json.Indent(&b, raw, "", "  "); err == nil {
			return shorten(b.String(), maxShown)
		}
	}
	return shorten(strconv.Quote(string(raw)), maxShown)
}

// shorten cuts s to at most n bytes (on a rune boundary) and says so.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("… (%d bytes more)", len(s)-cut)
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// ago says how long ago, in one unit.
func ago(d time.Duration) string {
	switch {
	case d < time.Second:
		return "now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func roundDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// codeCount is how many responders failed with one code.
type codeCount struct {
	Code  string
	Count int
}

func countCodes(codes []string) []codeCount {
	m := map[string]int{}
	for _, c := range codes {
		m[c]++
	}
	var out []codeCount
	for c, n := range m {
		out = append(out, codeCount{c, n})
	}
	slices.SortFunc(out, func(a, b codeCount) int { return cmp.Compare(a.Code, b.Code) })
	return out
}

// countText shows an agent's count, or nothing when it reports none.
func countText(n int64) string {
	if n < 0 {
		return ""
	}
	return strconv.FormatInt(n, 10)
}
