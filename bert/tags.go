package bert

// Tags of the external term format used by this package.
const (
	tagVersion      = 131
	tagNewFloat     = 70
	tagBitBinary    = 77
	tagCompressed   = 80
	tagSmallInteger = 97
	tagInteger      = 98
	tagFloat        = 99
	tagAtom         = 100
	tagSmallTuple   = 104
	tagLargeTuple   = 105
	tagNil          = 106
	tagString       = 107
	tagList         = 108
	tagBinary       = 109
	tagSmallBig     = 110
	tagLargeBig     = 111
	tagSmallAtom    = 115
	tagMap          = 116
	tagAtomUTF8     = 118
	tagSmallAtomUTF = 119
)

// floatLen is the size of the text field of FLOAT_EXT.
const floatLen = 31

// tagName names a tag for error messages.
func tagName(t byte) string {
	switch t {
	case 67:
		return "ATOM_CACHE_REF"
	case 70:
		return "NEW_FLOAT_EXT"
	case 77:
		return "BIT_BINARY_EXT"
	case 80:
		return "compressed term"
	case 88:
		return "NEW_PID_EXT"
	case 89:
		return "NEW_PORT_EXT"
	case 90:
		return "NEWER_REFERENCE_EXT"
	case 101:
		return "REFERENCE_EXT"
	case 102:
		return "PORT_EXT"
	case 103:
		return "PID_EXT"
	case 112:
		return "NEW_FUN_EXT"
	case 113:
		return "EXPORT_EXT"
	case 114:
		return "NEW_REFERENCE_EXT"
	case 117:
		return "FUN_EXT"
	case 120:
		return "V4_PORT_EXT"
	case 121:
		return "LOCAL_EXT"
	}
	return ""
}
