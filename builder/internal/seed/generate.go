package seed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgepair/edgepair/agent/pairconfig/strictyaml"
)

// Overrides are the pair-file fields given as command-line flags; set
// fields replace the pair file's.
type Overrides struct {
	Pair           string
	Nodes          []string // "NAME=ADDRESS[,mac=MAC][,link=ADDRESS][,linkMAC=MAC][,hostname=H][,interface=IF]"
	Interface      string
	LinkInterface  string
	VIP            string
	VRRPID         int
	Gateway        string
	Witness        string
	DNS            []string
	SearchDomains  []string
	Domain         string
	User           string
	SSHKeys        []string // key lines, or @file to read keys from a file
	InitialPrimary string
}

// Apply puts the overrides into s. Errors name the flag.
func (o Overrides) Apply(s *Spec) error {
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&s.Pair, o.Pair)
	set(&s.Interface, o.Interface)
	set(&s.LinkInterface, o.LinkInterface)
	set(&s.VIP, o.VIP)
	set(&s.Gateway, o.Gateway)
	set(&s.Witness, o.Witness)
	set(&s.Domain, o.Domain)
	set(&s.User, o.User)
	set(&s.InitialPrimary, o.InitialPrimary)
	if o.VRRPID != 0 {
		s.VRRPID = o.VRRPID
	}
	if len(o.DNS) > 0 {
		s.DNS = o.DNS
	}
	if len(o.SearchDomains) > 0 {
		s.SearchDomains = o.SearchDomains
	}
	if len(o.Nodes) > 0 {
		if len(o.Nodes) != 2 {
			return fmt.Errorf("--node given %d times, expected exactly 2 (one per node)", len(o.Nodes))
		}
		for i, f := range o.Nodes {
			n, err := ParseNodeFlag(f)
			if err != nil {
				return fmt.Errorf("--node %q: %w", f, err)
			}
			s.Nodes[i] = n
		}
	}
	if len(o.SSHKeys) > 0 {
		var keys []string
		for _, k := range o.SSHKeys {
			if name, ok := strings.CutPrefix(k, "@"); ok {
				data, err := os.ReadFile(name)
				if err != nil {
					return fmt.Errorf("--ssh-key %s: %w", k, err)
				}
				for _, line := range strings.Split(string(data), "\n") {
					if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
						keys = append(keys, line)
					}
				}
				continue
			}
			keys = append(keys, k)
		}
		s.SSHAuthorizedKeys = keys
	}
	return nil
}

// ParseNodeFlag reads "NAME=ADDRESS[,key=value...]" with keys mac, link,
// linkMAC, linkInterface, hostname and interface.
func ParseNodeFlag(v string) (SpecNode, error) {
	parts := strings.Split(v, ",")
	name, addr, ok := strings.Cut(parts[0], "=")
	if !ok || name == "" || addr == "" {
		return SpecNode{}, errors.New("expected NAME=ADDRESS/PREFIX[,mac=MAC][,link=ADDRESS/PREFIX][,linkMAC=MAC][,linkInterface=IF][,interface=IF][,hostname=H]")
	}
	n := SpecNode{Name: name, Address: addr}
	for _, p := range parts[1:] {
		k, val, ok := strings.Cut(p, "=")
		if !ok {
			return SpecNode{}, fmt.Errorf("%q is not key=value", p)
		}
		switch k {
		case "mac":
			n.MAC = val
		case "link":
			n.Link = val
		case "linkMAC":
			n.LinkMAC = val
		case "linkInterface":
			n.LinkInterface = val
		case "interface":
			n.Interface = val
		case "hostname":
			n.Hostname = val
		default:
			return SpecNode{}, fmt.Errorf("unknown key %q, expected mac, link, linkMAC, linkInterface, interface or hostname", k)
		}
	}
	return n, nil
}

// Options say what Generate does.
type Options struct {
	PairFile   string    // pair file (optional when the overrides say everything)
	FromRecord string    // rebuild from this pair record instead (no new secrets)
	Output     string    // output directory
	Overrides  Overrides // flags over the pair file
	Force      bool      // replace an existing pair record with a new pair
	Created    time.Time // creation time of a new pair (zero: now)
}

// ErrRecordExists is returned when the output already holds a pair record
// and neither FromRecord nor Force was given: writing a new pair there
// would silently give the deployed pair's seeds new secrets.
var ErrRecordExists = errors.New("pair record already exists")

// Generate makes a new pair (new secrets) from the pair file and
// overrides, or rebuilds the seeds of an existing pair from its record,
// and writes them to Output.
func Generate(ctx context.Context, o Options) (*Record, []Artifact, error) {
	if o.Output == "" {
		return nil, nil, errors.New("no output directory given (--output)")
	}
	var r *Record
	if o.FromRecord != "" {
		if o.PairFile != "" || !o.Overrides.empty() {
			return nil, nil, errors.New("--from-record rebuilds a pair exactly as recorded: leave out --pair-file and the pair flags")
		}
		data, err := os.ReadFile(o.FromRecord)
		if err != nil {
			return nil, nil, fmt.Errorf("pair record: %w", err)
		}
		if r, err = ParseRecord(data, o.FromRecord); err != nil {
			return nil, nil, err
		}
	} else {
		recPath := filepath.Join(o.Output, RecordFile)
		if _, err := os.Stat(recPath); err == nil && !o.Force {
			return nil, nil, fmt.Errorf("%w: %s; rebuild its seeds with --from-record %s, or pass --force to make a new pair with new secrets", ErrRecordExists, recPath, recPath)
		}
		spec := &Spec{}
		pos := strictyaml.Positions{}
		name := "flags"
		if o.PairFile != "" {
			data, err := os.ReadFile(o.PairFile)
			if err != nil {
				return nil, nil, fmt.Errorf("pair file: %w", err)
			}
			if spec, pos, err = decodeSpec(data, o.PairFile); err != nil {
				return nil, nil, err
			}
			name = o.PairFile
		}
		if !o.Overrides.empty() {
			if err := o.Overrides.Apply(spec); err != nil {
				return nil, nil, err
			}
			// Lines of the file would mislead where flags set a field.
			pos = strictyaml.Positions{}
			if o.PairFile != "" {
				name = o.PairFile + " with flags"
			}
		}
		if err := spec.check(pos, name); err != nil {
			return nil, nil, err
		}
		created := o.Created
		if created.IsZero() {
			created = time.Now()
		}
		var err error
		if r, err = NewRecord(*spec, created); err != nil {
			return nil, nil, err
		}
	}
	arts, err := Write(ctx, r, o.Output)
	return r, arts, err
}

func (o Overrides) empty() bool {
	return o.Pair == "" && len(o.Nodes) == 0 && o.Interface == "" && o.LinkInterface == "" && o.VIP == "" &&
		o.VRRPID == 0 && o.Gateway == "" && o.Witness == "" && len(o.DNS) == 0 && len(o.SearchDomains) == 0 &&
		o.Domain == "" && o.User == "" && len(o.SSHKeys) == 0 && o.InitialPrimary == ""
}
