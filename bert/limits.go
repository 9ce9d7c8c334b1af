package bert

// Limits bound the work [UnmarshalLimits] does on untrusted input. A zero
// field means the default from [DefaultLimits].
type Limits struct {
	// MaxSize is the largest accepted input in bytes.
	MaxSize int
	// MaxDepth is the deepest nesting of tuples, lists, maps and complex types.
	MaxDepth int
	// MaxAtomLen is the longest accepted atom in bytes.
	MaxAtomLen int
	// MaxElements is the total number of terms the input may contain.
	MaxElements int
	// MaxBigLen is the largest accepted bignum magnitude in bytes.
	MaxBigLen int
}

// Default limits.
const (
	DefaultMaxSize     = 16 << 20
	DefaultMaxDepth    = 64
	DefaultMaxAtomLen  = 255 * 4
	DefaultMaxElements = 1 << 20
	DefaultMaxBigLen   = 4096
)

// DefaultLimits returns the limits [Unmarshal] uses.
func DefaultLimits() Limits {
	return Limits{
		MaxSize:     DefaultMaxSize,
		MaxDepth:    DefaultMaxDepth,
		MaxAtomLen:  DefaultMaxAtomLen,
		MaxElements: DefaultMaxElements,
		MaxBigLen:   DefaultMaxBigLen,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxSize <= 0 {
		l.MaxSize = d.MaxSize
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = d.MaxDepth
	}
	if l.MaxAtomLen <= 0 {
		l.MaxAtomLen = d.MaxAtomLen
	}
	if l.MaxElements <= 0 {
		l.MaxElements = d.MaxElements
	}
	if l.MaxBigLen <= 0 {
		l.MaxBigLen = d.MaxBigLen
	}
	return l
}
