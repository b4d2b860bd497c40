package charts_test

import (
	"debug/elf"
	"fmt"
)

// isStatic reports whether the ELF binary at path needs no dynamic loader
// and no shared library, as a scratch or distroless-static image requires.
func isStatic(path string) (bool, string) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err.Error()
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, "it has a PT_INTERP (dynamic loader) program header"
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return false, err.Error()
	}
	if len(libs) > 0 {
		return false, fmt.Sprintf("it links %v", libs)
	}
	return true, ""
}
