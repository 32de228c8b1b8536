package strictjson

import "testing"

func TestDecode(t *testing.T) {
	type v struct{ A int }
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"A":1}`, true},
		{` {"A":1} `, true},
		{`{"A":1,"B":2}`, false},
		{`{"A":1}{}`, false},
		{`{"A":1}]`, false},
		{`{"A":1} x`, false},
		{`{"A":`, false},
		{``, false},
	} {
		var got v
		if err := Decode([]byte(tc.in), &got); (err == nil) != tc.ok {
			t.Errorf("Decode(%q) = %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}
