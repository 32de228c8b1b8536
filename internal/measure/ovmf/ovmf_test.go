package ovmf

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
)

// image builds a firmware tail holding the given entries in a footer table.
func image(entries map[GUID][]byte, order []GUID) []byte {
	var tbl []byte
	for _, g := range order {
		d := entries[g]
		tbl = append(tbl, d...)
		tbl = binary.LittleEndian.AppendUint16(tbl, uint16(len(d)+entryHeaderSize))
		tbl = append(tbl, g[:]...)
	}
	tbl = binary.LittleEndian.AppendUint16(tbl, uint16(len(tbl)+entryHeaderSize))
	tbl = append(tbl, FooterGUID[:]...)
	img := make([]byte, 4096-len(tbl)-resetVectorSize)
	img = append(img, tbl...)
	return append(img, make([]byte, resetVectorSize)...)
}

func TestMustGUID(t *testing.T) {
	g := MustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	want := []byte{0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d}
	if string(g[:]) != string(want) {
		t.Fatalf("%x", g)
	}
	for _, bad := range []string{"", "96b582de-1fb2-45f7-baea-a366c55a082", "96b582de-1fb2-45f7-baea-a366c55a082g"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("MustGUID(%q) did not panic", bad)
				}
			}()
			MustGUID(bad)
		}()
	}
}

func TestParseTable(t *testing.T) {
	a, b := MustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e"), MustGUID("dc886566-984a-4798-a75e-5585a7bf67cc")
	img := image(map[GUID][]byte{a: {1, 2, 3, 4}, b: {5, 6, 7, 8, 9}}, []GUID{a, b})
	tbl, err := ParseTable(img)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := tbl.Uint32(a); !ok || v != 0x04030201 {
		t.Fatalf("a = %#x %v", v, ok)
	}
	if string(tbl[b]) != "\x05\x06\x07\x08\x09" || len(tbl) != 2 {
		t.Fatalf("table %v", tbl)
	}
	if _, ok := tbl.Uint32(MustGUID("7255371f-3a3b-4b04-927b-1da6efa8d454")); ok {
		t.Fatal("absent entry found")
	}
}

// TestRealFirmwareTail reads the table of edk2's AmdSev build (the
// snp package's test vector).
func TestRealFirmwareTail(t *testing.T) {
	b, err := os.ReadFile("../snp/testdata/ovmf_AmdSev_suffix.bin")
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := ParseTable(b)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := tbl.Uint32(MustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")); !ok || v == 0 {
		t.Fatalf("no SEV-ES reset block: %#x", v)
	}
}

func TestParseTableBad(t *testing.T) {
	a := MustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	good := image(map[GUID][]byte{a: {1, 2, 3, 4}}, []GUID{a})
	end := len(good) - resetVectorSize
	mut := func(f func([]byte)) []byte { c := append([]byte(nil), good...); f(c); return c }
	cases := []struct {
		name string
		img  []byte
		want string
	}{
		{"short", make([]byte, 20), "too short"},
		{"no footer", make([]byte, 4096), "no OVMF GUIDed footer table"},
		{"footer size too small", mut(func(b []byte) { binary.LittleEndian.PutUint16(b[end-18:], 3) }), "does not fit"},
		{"footer size too big", mut(func(b []byte) { binary.LittleEndian.PutUint16(b[end-18:], 0xffff) }), "does not fit"},
		{"entry size too small", mut(func(b []byte) { binary.LittleEndian.PutUint16(b[end-36:], 1) }), "outside the table"},
		{"entry size too big", mut(func(b []byte) { binary.LittleEndian.PutUint16(b[end-36:], 900) }), "outside the table"},
		{"duplicate", image(map[GUID][]byte{a: {1}}, []GUID{a, a}), "twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseTable(c.img)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	if _, err := ParseTable(make([]byte, 4096)); !errors.Is(err, ErrNoTable) {
		t.Fatal(err)
	}
}

func FuzzParseTable(f *testing.F) {
	a := MustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	f.Add(image(map[GUID][]byte{a: {1, 2, 3, 4}}, []GUID{a}))
	if b, err := os.ReadFile("../snp/testdata/ovmf_OvmfX64_suffix.bin"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tbl, err := ParseTable(b)
		if err != nil {
			return
		}
		for g, d := range tbl {
			if len(d) > len(b) {
				t.Fatalf("entry %x longer than the image", g)
			}
		}
	})
}
