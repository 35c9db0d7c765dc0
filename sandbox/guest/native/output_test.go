package main

import (
	"bytes"
	"math/rand"
	"strconv"
	"testing"
)

// The buffer fed a byte at a time keeps the same head and tail as one write would.
func TestHeadTailBufferStreamsInSmallWrites(t *testing.T) {
	b := NewHeadTailBuffer(10)
	for _, c := range []byte("0123456789abcdefghij") {
		b.Write([]byte{c})
	}
	if b.Total != 20 || b.Dropped() != 10 {
		t.Fatalf("total %d dropped %d", b.Total, b.Dropped())
	}
	if got := b.Text(); got != "01234\n[... 10 bytes omitted ...]\nfghij" {
		t.Fatalf("text %q", got)
	}
	if len(b.head)+b.tailLen != 10 {
		t.Fatalf("kept %d bytes", len(b.head)+b.tailLen)
	}
}

// Any split of any stream gives what keeping the whole stream and cutting it would.
func TestHeadTailBufferMatchesTheWholeStream(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for trial := 0; trial < 500; trial++ {
		capacity := rng.Intn(40)
		b := NewHeadTailBuffer(capacity)
		var all []byte
		for w := rng.Intn(12); w > 0; w-- {
			chunk := make([]byte, rng.Intn(30))
			for i := range chunk {
				chunk[i] = byte('a' + rng.Intn(26))
			}
			all = append(all, chunk...)
			b.Write(chunk)
		}
		head, tail := capacity/2, capacity-capacity/2
		want := string(all)
		if len(all) > capacity {
			want = string(all[:head]) + "\n[... " + strconv.Itoa(len(all)-capacity) + " bytes omitted ...]\n" + string(all[len(all)-tail:])
		}
		if got := b.Text(); got != want || b.Total != int64(len(all)) {
			t.Fatalf("cap %d: got %q want %q", capacity, got, want)
		}
	}
}

func TestTruncationInsideAUTF8Character(t *testing.T) {
	b := NewHeadTailBuffer(3)
	b.Write(bytes.Repeat([]byte("\u00e9"), 4))
	if got := b.Text(); got != "\ufffd\n[... 5 bytes omitted ...]\n\u00e9" {
		t.Fatalf("%q", got)
	}
}

// What Python's bytes.decode("utf-8", "replace") gives (checked against CPython 3.11).
func TestDecodeLikePython(t *testing.T) {
	cases := map[string]string{
		"\xe2\x82A":         "\ufffdA",
		"\xf0\x9f\x98":      "\ufffd",
		"\xed\xa0\x80":      "\ufffd\ufffd\ufffd",
		"\xc0\xaf":          "\ufffd\ufffd",
		"\xf4\x90\x80\x80":  "\ufffd\ufffd\ufffd\ufffd",
		"\xe0\x80\x80":      "\ufffd\ufffd\ufffd",
		"\xf0\x80\x80\x80x": "\ufffd\ufffd\ufffd\ufffdx",
		"\xff":              "\ufffd",
		"caf\xe9!":          "caf\ufffd!",
		"ok \u00e9\u2028":   "ok \u00e9\u2028",
	}
	for in, want := range cases {
		if got := decodeUTF8Replace([]byte(in)); got != want {
			t.Errorf("%q: got %q want %q", in, got, want)
		}
	}
}

func TestPythonStringHelpers(t *testing.T) {
	if got := pyStrip(" \x1c\tcat: x: No such file\n\u00a0"); got != "cat: x: No such file" {
		t.Errorf("strip %q", got)
	}
	got := pySplitlines("a\r\nb\rc\x1dd\u2028e\n")
	want := []string{"a", "b", "c", "d", "e"}
	if len(got) != len(want) {
		t.Fatalf("splitlines %q", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("splitlines %q", got)
		}
	}
}
