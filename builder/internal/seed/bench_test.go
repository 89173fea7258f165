package seed

import (
	"context"
	"testing"
)

// BenchmarkRender renders both nodes' cloud-init files from a record.
func BenchmarkRender(b *testing.B) {
	r := fixedRecord(b, "pair-full.yaml")
	for b.Loop() {
		if _, err := Render(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWrite writes a whole pair's seeds (record, 2 ISOs, 2 FAT
// images, guestinfo, plain files): the time `builder seed` spends.
func BenchmarkWrite(b *testing.B) {
	r := fixedRecord(b, "pair.yaml")
	dir := b.TempDir()
	for b.Loop() {
		if _, err := Write(context.Background(), r, dir); err != nil {
			b.Fatal(err)
		}
	}
}
