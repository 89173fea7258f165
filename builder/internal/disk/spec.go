package disk

import (
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
)

// diskfsSpec is the ESP: FAT32, label ESP, reproducible (fixed volume
// serial; file times from SOURCE_DATE_EPOCH, which the caller sets).
func diskfsSpec() disk.FilesystemSpec {
	return disk.FilesystemSpec{Partition: 1, FSType: filesystem.TypeFat32, VolumeLabel: "ESP", Reproducible: true}
}
