// JSON in and out, as the protocol fixes it (guest_protocol.py) and as Python's json module
// reads and writes it, which the worker uses: a reply is the same bytes the worker would
// encode (pids and durations aside), and a request is read the way the worker meant it.
//
// In: an object keeps its keys in order (exec's env is added to the command's environment in
// the request's order, as a Python dict would); numbers stay their literal (json.Number), so
// that 1 and 1.0 stay an int and a float, as Python's json tells them apart.
// Out: compact, non-ASCII not escaped, keys in the order the reply is built, and every
// escape exactly as Python's json.dumps(ensure_ascii=False) writes it (encoding/json would
// escape <, >, &, U+2028 and U+2029, and write \b and \f as \u0008 and \u000c).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"math/big"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxDepth is where Python's decoder gives up (RecursionError): "not valid JSON" for both.
const maxDepth = 1000

// jobj is a decoded JSON object: keys in first-seen order, the last value of a repeated key
// (a Python dict built from the same text).
type jobj struct {
	keys []string
	vals map[string]any
}

// get is Python's req.get(name): absent and null are both "no value" to the callers, which
// test for nil.
func (o *jobj) get(name string) any {
	if o == nil {
		return nil
	}
	return o.vals[name]
}

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// decodeJSON parses one JSON text: values are nil, bool, json.Number, string, []any, *jobj.
// As Python's json.loads of bytes: a UTF-8 BOM is allowed, invalid UTF-8 is not.
func decodeJSON(data []byte) (any, error) {
	data = bytes.TrimPrefix(data, utf8BOM)
	if !utf8.Valid(data) {
		return nil, errors.New("invalid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("extra data after the JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder, depth int) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return nil, errors.New("expecting a value")
		}
		return nil, err
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	if depth >= maxDepth {
		return nil, errors.New("nested too deeply")
	}
	switch delim {
	case '{':
		o := &jobj{vals: map[string]any{}}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key, ok := kt.(string)
			if !ok {
				return nil, errors.New("object key is not a string")
			}
			v, err := decodeValue(dec, depth+1)
			if err != nil {
				return nil, err
			}
			if _, seen := o.vals[key]; !seen {
				o.keys = append(o.keys, key)
			}
			o.vals[key] = v
		}
		if _, err := dec.Token(); err != nil { // the closing brace
			return nil, err
		}
		return o, nil
	case '[':
		list := []any{}
		for dec.More() {
			v, err := decodeValue(dec, depth+1)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		if _, err := dec.Token(); err != nil {
			return nil, err
		}
		return list, nil
	}
	return nil, errors.New("unexpected delimiter")
}

// isIntLiteral: a JSON number Python reads as an int (no fraction, no exponent).
func isIntLiteral(n json.Number) bool {
	return !strings.ContainsAny(string(n), ".eE")
}

// bigInt is an int literal's value, whatever its size (Python ints have none).
func bigInt(n json.Number) *big.Int {
	v, ok := new(big.Int).SetString(string(n), 10)
	if !ok {
		return new(big.Int)
	}
	return v
}

// clampInt64 is v within int64: line numbers and caps beyond it behave as the bound does.
func clampInt64(v *big.Int) int64 {
	if v.IsInt64() {
		return v.Int64()
	}
	if v.Sign() < 0 {
		return math.MinInt64
	}
	return math.MaxInt64
}

// floatOf is a number's value as Python's float() of it would be (inf when it overflows).
func floatOf(n json.Number) float64 {
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return math.NaN()
	}
	return f
}

// truthy is Python's truth value of a decoded JSON value (`req.get(name) or default`).
func truthy(v any) bool {
	switch t := v.(type) {
	case nil:
		return false
	case bool:
		return t
	case json.Number:
		if isIntLiteral(t) {
			return bigInt(t).Sign() != 0
		}
		return floatOf(t) != 0
	case string:
		return t != ""
	case []any:
		return len(t) > 0
	case *jobj:
		return len(t.keys) > 0
	}
	return true
}

// numberField: an int or a finite float, or the default.
func numberField(req *jobj, name string, def float64) (float64, error) {
	v := req.get(name)
	if v == nil {
		return def, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, badRequestf("'%s' must be a finite number", name)
	}
	f := floatOf(n)
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, badRequestf("'%s' must be a finite number", name)
	}
	return f, nil
}

// intField: a non-negative int, or the default. Values beyond
// int64 are taken as its largest (every caller caps them far below).
func intField(req *jobj, name string, def int64) (int64, error) {
	v := req.get(name)
	if v == nil {
		return def, nil
	}
	n, ok := v.(json.Number)
	if !ok || !isIntLiteral(n) {
		return 0, badRequestf("'%s' must be a non-negative integer", name)
	}
	b := bigInt(n)
	if b.Sign() < 0 {
		return 0, badRequestf("'%s' must be a non-negative integer", name)
	}
	return clampInt64(b), nil
}

// capField is the output_cap of shell, read_file and exec: at most MaxOutputCap.
func capField(req *jobj) (int, error) {
	c, err := intField(req, "output_cap", DefaultCap)
	if err != nil {
		return 0, err
	}
	if c > MaxOutputCap {
		c = MaxOutputCap
	}
	return int(c), nil
}

// --- out ---------------------------------------------------------------------------------

// kv and obj: a reply, its keys in the order Python's dict literal has them.
type kv struct {
	k string
	v any
}
type obj []kv

// encodeReply: one compact JSON line, non-ASCII as UTF-8 (json.dumps with ensure_ascii=False).
func encodeReply(o obj) []byte {
	var b bytes.Buffer
	writeValue(&b, o)
	b.WriteByte('\n')
	return b.Bytes()
}

func writeValue(b *bytes.Buffer, v any) {
	switch t := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if t {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case int:
		b.WriteString(strconv.Itoa(t))
	case int64:
		b.WriteString(strconv.FormatInt(t, 10))
	case float64:
		b.WriteString(pyFloatRepr(t))
	case string:
		writeString(b, t)
	case []string:
		b.WriteByte('[')
		for i, s := range t {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, s)
		}
		b.WriteByte(']')
	case obj:
		b.WriteByte('{')
		for i, e := range t {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, e.k)
			b.WriteByte(':')
			writeValue(b, e.v)
		}
		b.WriteByte('}')
	default:
		panic("encodeReply: unsupported type")
	}
}

const hexDigits = "0123456789abcdef"

// writeString escapes as Python's json with ensure_ascii=False: the two mandatory escapes,
// the five short control escapes, \u00XX (lowercase) for the other control characters, and
// nothing else. s is valid UTF-8 (replies decode command output with replacement).
func writeString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b.WriteString(s[start:i])
		switch c {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			b.WriteString(`\u00`)
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xF])
		}
		start = i + 1
	}
	b.WriteString(s[start:])
	b.WriteByte('"')
}

// pyFloatRepr is Python's repr of a float: the shortest round-trip digits, positional from
// 1e-4 up to 1e16 (always with a fraction: 5.0), in exponent form outside.
func pyFloatRepr(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	case math.IsNaN(f):
		return "nan"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±XX
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if f != 0 && (exp < -4 || exp >= 16) {
		return e
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// roundMillis is Python's round(seconds * 1000, 3): durations in ms with 3 decimals.
func roundMillis(seconds float64) float64 {
	v, _ := strconv.ParseFloat(strconv.FormatFloat(seconds*1000, 'f', 3, 64), 64)
	return v
}

// pyStr is Python's str() of a decoded JSON value, for messages that quote a request's
// value ("unknown op: ...").
func pyStr(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return pyRepr(v)
}

func pyRepr(v any) string {
	switch t := v.(type) {
	case nil:
		return "None"
	case bool:
		if t {
			return "True"
		}
		return "False"
	case json.Number:
		if isIntLiteral(t) {
			return bigInt(t).String()
		}
		return pyFloatRepr(floatOf(t))
	case string:
		return pyStrRepr(t)
	case []any:
		parts := make([]string, len(t))
		for i, e := range t {
			parts[i] = pyRepr(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case *jobj:
		parts := make([]string, len(t.keys))
		for i, k := range t.keys {
			parts[i] = pyStrRepr(k) + ": " + pyRepr(t.vals[k])
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return "?"
}

// pyStrRepr is Python's repr of a str: single quotes unless it holds ' and no ".
func pyStrRepr(s string) string {
	quote := byte('\'')
	if strings.ContainsRune(s, '\'') && !strings.ContainsRune(s, '"') {
		quote = '"'
	}
	var b strings.Builder
	b.WriteByte(quote)
	for _, r := range s {
		switch {
		case r == rune(quote) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			b.WriteString(`\x`)
			b.WriteByte(hexDigits[r>>4])
			b.WriteByte(hexDigits[r&0xF])
		case !unicode.IsPrint(r) && r != ' ':
			if r <= 0xFFFF {
				b.WriteString(`\u` + leftPad(strconv.FormatInt(int64(r), 16), 4))
			} else {
				b.WriteString(`\U` + leftPad(strconv.FormatInt(int64(r), 16), 8))
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(quote)
	return b.String()
}

func leftPad(s string, n int) string {
	for len(s) < n {
		s = "0" + s
	}
	return s
}
