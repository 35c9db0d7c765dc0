package main

import (
	"encoding/json"
	"testing"
)

// Python: json.dumps(..., ensure_ascii=False, separators=(",", ":")).
func TestRepliesAreEncodedAsPythonDoes(t *testing.T) {
	got := string(encodeReply(obj{
		{"a", "\x01\x1b\x7f\b\f\u2028\u00e9\"\\/<>&\n\r\t"},
		{"n", nil}, {"t", true}, {"i", 7}, {"l", int64(-3)},
		{"f", 12.0}, {"g", 0.001}, {"h", 1e16}, {"s", []string{"x", "y"}},
	}))
	want := `{"a":"\u0001\u001b` + "\x7f" + `\b\f` + "\u2028\u00e9" + `\"\\/<>&\n\r\t","n":null,"t":true,"i":7,"l":-3,"f":12.0,"g":0.001,"h":1e+16,"s":["x","y"]}` + "\n"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestFloatReprAndRounding(t *testing.T) {
	for f, want := range map[float64]string{0: "0.0", 5: "5.0", 12.345: "12.345", 1.5e-5: "1.5e-05", 1e16: "1e+16", 123456.789: "123456.789"} {
		if got := pyFloatRepr(f); got != want {
			t.Errorf("%v: got %s want %s", f, got, want)
		}
	}
	if got := roundMillis(0.0123456789); got != 12.346 {
		t.Errorf("roundMillis %v", got)
	}
}

func TestDecodeKeepsOrderIntsAndLastDuplicate(t *testing.T) {
	v, err := decodeJSON([]byte("\xef\xbb\xbf{\"b\": 1, \"a\": 1.0, \"b\": [true, null, \"x\"]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := v.(*jobj)
	if len(o.keys) != 2 || o.keys[0] != "b" || o.keys[1] != "a" {
		t.Fatalf("keys %v", o.keys)
	}
	if isIntLiteral(o.vals["a"].(json.Number)) || len(o.vals["b"].([]any)) != 3 {
		t.Fatalf("vals %v", o.vals)
	}
	for _, bad := range []string{"", "{} {}", "{\"a\": NaN}", "\xff", "[1,]", "{\"a\" 1}"} {
		if _, err := decodeJSON([]byte(bad)); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
	deep := make([]byte, 0, 4000)
	for i := 0; i < 2000; i++ {
		deep = append(deep, '[')
	}
	if _, err := decodeJSON(deep); err == nil {
		t.Error("2000 levels decoded")
	}
}

func TestPythonReprOfRequestValues(t *testing.T) {
	v, _ := decodeJSON([]byte(`["a", 1, -0, 2.50, null, true, {"k": "it's"}, 1e400]`))
	if got := pyStr(v); got != `['a', 1, 0, 2.5, None, True, {'k': "it's"}, inf]` {
		t.Fatalf("%s", got)
	}
}
