package demo

import (
	"context"
	"flag"
	"fmt"

	"github.com/vmbackup/vmbackup/hypervisor/ave"
)

// HypervisorFlags are the flags that choose the examples' hypervisor.
type HypervisorFlags struct {
	Kind   *string // "fake" or "ave"
	AOCURL *string
	VMID   *string
}

// RegisterHypervisorFlags adds -hypervisor, -aoc-url and -vm to the
// default flag set. AOC credentials come from the environment
// (AOC_USERNAME, AOC_PASSWORD, AOC_SOURCE or AOC_TOKEN, AOC_CA_FILE,
// AOC_INSECURE_SKIP_VERIFY), never from flags, so they stay out of shell
// history and process lists.
func RegisterHypervisorFlags() HypervisorFlags {
	return HypervisorFlags{
		Kind:   flag.String("hypervisor", "fake", `"fake" (a generated disk, nothing to set up) or "ave" (a real AOC; credentials from AOC_* environment variables)`),
		AOCURL: flag.String("aoc-url", "", "AOC base URL, with -hypervisor ave"),
		VMID:   flag.String("vm", "", "id of the VM to work on, with -hypervisor ave"),
	}
}

// NewLab builds the lab the flags ask for: the fake one (FakeLab with size
// and seed), or an existing VM on AVE. An AVE lab has no guest writes
// (WriteDisk is nil) and reads disks through snapshots.
func (f HypervisorFlags) NewLab(ctx context.Context, dir string, size, seed int64) (*Lab, error) {
	switch *f.Kind {
	case "fake", "":
		return FakeLab(ctx, dir, size, seed)
	case "ave":
		if *f.AOCURL == "" {
			return nil, fmt.Errorf("-aoc-url is required with -hypervisor ave")
		}
		if *f.VMID == "" {
			return nil, fmt.Errorf("-vm is required with -hypervisor ave")
		}
		opts, err := ave.OptionsFromEnv(*f.AOCURL)
		if err != nil {
			return nil, err
		}
		opts.TempDir = dir
		hv, err := ave.New(opts)
		if err != nil {
			return nil, err
		}
		vm, err := hv.VM(ctx, *f.VMID)
		if err != nil {
			return nil, err
		}
		return &Lab{HV: hv, VM: vm, Close: func() error { return nil }}, nil
	default:
		return nil, fmt.Errorf("-hypervisor %q: want \"fake\" or \"ave\"", *f.Kind)
	}
}
