package mapper

import "time"

// SetRescueIdle sets how long m's rescues wait on an empty queue before
// they end, so that a test can hold a rescue open.
func SetRescueIdle(m *Mapper, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rescueIdleFor = d
}
