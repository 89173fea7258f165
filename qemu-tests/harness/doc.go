// Package harness boots edgepair images under QEMU for tests: accelerator detection
// (KVM only where it really works, TCG otherwise), OVMF firmware, one artifacts folder
// per machine (console.txt, cmdline.txt, journal extracts), a QMP control socket for
// power operations, and a root test shell over a virtio-serial port
// (org.edgepair.testshell) that the image provides only when the hypervisor offers
// that port.
//
// The package is silent (it logs only to Config.Log when one is given) and never
// exits; QEMU runs with a parent-death signal so it never outlives the test binary.
package harness
