package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// NewRunDir creates root/<prefix>-<UTC time>-<pid> for one test run's artifacts and
// points root/<prefix>-latest at it (replaced atomically with a rename).
func NewRunDir(root, prefix string, now time.Time) (string, error) {
	name := fmt.Sprintf("%s-%s-%d", prefix, now.UTC().Format("20060102T150405Z"), os.Getpid())
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("artifacts: %w", err)
	}
	link := filepath.Join(root, prefix+"-latest")
	tmp := link + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(name, tmp); err != nil {
		return "", fmt.Errorf("artifacts: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		return "", fmt.Errorf("artifacts: %w", err)
	}
	return dir, nil
}
