package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// LoadAverage returns the 1-minute load average from /proc/loadavg. It is
// the default status an agent advertises; on systems without /proc it
// returns an error and the agent advertises 0.
func LoadAverage() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, fmt.Errorf("agent: read load average: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("agent: /proc/loadavg is empty")
	}
	return strconv.ParseFloat(f[0], 64)
}
