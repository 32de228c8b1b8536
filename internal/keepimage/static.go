package keepimage

// CheckStatic refuses a binary that is not a static x86-64 ELF executable
// (castellan's container image has no dynamic loader either).
func CheckStatic(b []byte) error { return checkStatic(b) }
