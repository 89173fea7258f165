package dep
import (
 _ "github.com/diskfs/go-diskfs"
 _ "github.com/google/go-containerregistry/pkg/v1/layout"
 _ "github.com/jackc/pgx/v5"
 _ "github.com/vishvananda/netlink"
 _ "github.com/coreos/go-systemd/v22/dbus"
 _ "github.com/urfave/cli/v2"
 _ "gopkg.in/yaml.v3"
 _ "github.com/prometheus/client_golang/prometheus"
)
