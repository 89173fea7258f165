package rootfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// ExtractFile copies the regular file at path inside the OCI image ref
// (e.g. rancher/k3s:v1.31.4-k3s1, /bin/k3s) to out.
func ExtractFile(ctx context.Context, ref, p, out string) error {
	img, err := OpenBase(ctx, ref)
	if err != nil {
		return err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	want := strings.TrimPrefix(path.Clean("/"+p), "/")
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: no file %s in the image", ref, p)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", ref, err)
		}
		if strings.TrimPrefix(path.Clean("/"+h.Name), "/") != want {
			continue
		}
		if h.Typeflag != tar.TypeReg {
			return fmt.Errorf("%s: %s is not a regular file", ref, p)
		}
		f, err := os.OpenFile(out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, tr); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
}
