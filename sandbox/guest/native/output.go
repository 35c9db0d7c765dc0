// Output kept as head + tail, and bytes decoded into text
// exactly as Python's bytes.decode("utf-8", "replace") does it.
package main

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

const chunkSize = 65536 // bytes per read from a command's pipe or a file

// HeadTailBuffer keeps the first cap/2 and the last cap - cap/2 bytes of a stream and counts
// the rest, so that the guest's memory stays bounded however much a command prints.
type HeadTailBuffer struct {
	headCap, tailCap int
	head             []byte
	tail             []byte // a ring of tailCap bytes once full; tailStart is its oldest byte
	tailStart        int
	tailLen          int
	Total            int64
}

func NewHeadTailBuffer(cap int) *HeadTailBuffer {
	if cap < 0 {
		cap = 0
	}
	return &HeadTailBuffer{headCap: cap / 2, tailCap: cap - cap/2}
}

func (b *HeadTailBuffer) Write(data []byte) {
	b.Total += int64(len(data))
	if room := b.headCap - len(b.head); room > 0 {
		if room > len(data) {
			room = len(data)
		}
		b.head = append(b.head, data[:room]...)
		data = data[room:]
	}
	if len(data) == 0 || b.tailCap == 0 {
		return
	}
	if len(data) >= b.tailCap { // the new bytes alone fill the tail
		if len(b.tail) < b.tailCap {
			b.tail = make([]byte, b.tailCap)
		}
		copy(b.tail, data[len(data)-b.tailCap:])
		b.tailStart, b.tailLen = 0, b.tailCap
		return
	}
	if len(b.tail) < b.tailCap { // still filling up in order: grow as needed, small stays small
		n := b.tailCap - len(b.tail)
		if n > len(data) {
			n = len(data)
		}
		b.tail = append(b.tail, data[:n]...)
		b.tailLen += n
		data = data[n:]
	}
	for len(data) > 0 { // a full ring: each byte written overwrites the oldest
		end := (b.tailStart + b.tailLen) % b.tailCap
		n := copy(b.tail[end:], data)
		data = data[n:]
		b.tailLen += n
		if b.tailLen > b.tailCap {
			b.tailStart = (b.tailStart + b.tailLen - b.tailCap) % b.tailCap
			b.tailLen = b.tailCap
		}
	}
}

// tailBytes is the tail in order.
func (b *HeadTailBuffer) tailBytes() []byte {
	if b.tailLen == 0 {
		return nil
	}
	out := make([]byte, 0, b.tailLen)
	end := b.tailStart + b.tailLen
	if end <= len(b.tail) {
		return append(out, b.tail[b.tailStart:end]...)
	}
	out = append(out, b.tail[b.tailStart:]...)
	return append(out, b.tail[:end-len(b.tail)]...)
}

// Dropped is the number of bytes left out of the middle.
func (b *HeadTailBuffer) Dropped() int64 {
	return b.Total - int64(len(b.head)) - int64(b.tailLen)
}

// Text is head + marker + tail, decoded after joining, so that a character cut at the seam
// becomes one U+FFFD; the marker is the protocol's (guest_protocol.py, "Guarantees").
func (b *HeadTailBuffer) Text() string {
	joined := make([]byte, 0, len(b.head)+b.tailLen+40)
	joined = append(joined, b.head...)
	if d := b.Dropped(); d > 0 {
		joined = append(joined, "\n[... "+strconv.FormatInt(d, 10)+" bytes omitted ...]\n"...)
	}
	joined = append(joined, b.tailBytes()...)
	return decodeUTF8Replace(joined)
}

// decodeUTF8Replace is Python's data.decode("utf-8", "replace"): each maximal subpart of an
// ill-formed sequence becomes one U+FFFD (Unicode's recommended practice), where Go's own
// conversion would give one U+FFFD per byte of a truncated sequence.
func decodeUTF8Replace(data []byte) string {
	if utf8.Valid(data) {
		return string(data)
	}
	var sb strings.Builder
	sb.Grow(len(data) + 16)
	for i := 0; i < len(data); {
		c := data[i]
		if c < 0x80 {
			sb.WriteByte(c)
			i++
			continue
		}
		need, lo, hi := 0, byte(0x80), byte(0xBF)
		switch {
		case c >= 0xC2 && c <= 0xDF:
			need = 1
		case c == 0xE0:
			need, lo = 2, 0xA0
		case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
			need = 2
		case c == 0xED:
			need, hi = 2, 0x9F
		case c == 0xF0:
			need, lo = 3, 0x90
		case c >= 0xF1 && c <= 0xF3:
			need = 3
		case c == 0xF4:
			need, hi = 3, 0x8F
		default: // 0x80-0xC1, 0xF5-0xFF: never valid
			sb.WriteRune(utf8.RuneError)
			i++
			continue
		}
		j := i + 1
		ok := true
		for k := 0; k < need; k++ {
			if j >= len(data) {
				ok = false
				break
			}
			l, h := byte(0x80), byte(0xBF)
			if k == 0 {
				l, h = lo, hi
			}
			if data[j] < l || data[j] > h {
				ok = false
				break
			}
			j++
		}
		if ok {
			sb.Write(data[i:j])
		} else {
			sb.WriteRune(utf8.RuneError) // the valid prefix data[i:j] is one maximal subpart
		}
		i = j
	}
	return sb.String()
}

// isPySpace is Python's str.isspace for one character (Go's unicode.IsSpace lacks the
// information separators U+001C-U+001F).
func isPySpace(r rune) bool {
	return unicode.IsSpace(r) || (r >= 0x1C && r <= 0x1F)
}

// pyStrip is Python's str.strip().
func pyStrip(s string) string { return strings.TrimFunc(s, isPySpace) }

// pySplitlines is Python's str.splitlines(): lines end at any of Python's line boundaries.
func pySplitlines(s string) []string {
	var lines []string
	runes := []rune(s)
	var cur strings.Builder
	for i := 0; i < len(runes); i++ {
		r := runes[i]
		switch r {
		case '\n', '\r', '\v', '\f', 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029:
			lines = append(lines, cur.String())
			cur.Reset()
			if r == '\r' && i+1 < len(runes) && runes[i+1] == '\n' {
				i++
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}
