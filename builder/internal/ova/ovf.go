// Package ova writes an OVA for vSphere import: an OVF descriptor with EFI
// firmware and guestinfo properties, a streamOptimized VMDK and a SHA256
// manifest, packed as a ustar archive in the order vSphere expects (OVF,
// manifest, disk). See shared/research/builders.md section 4 for the traps
// this avoids (BootOrderSection, "SHA2-256", spaces in the manifest).
package ova

import (
	"bytes"
	"fmt"
	"strings"
	"text/template"
)

// Spec describes the virtual machine the OVF declares.
type Spec struct {
	// Name is the virtual system's name and the base name of the OVA files.
	Name string
	// Product and Version go into the ProductSection shown at import time.
	Product string
	Version string
	// Annotation is a free-text description shown in vSphere.
	Annotation string
	CPUs       int
	MemoryMiB  int
	// HardwareVersion is the vmx-N virtual hardware version (vmx-13 = ESXi 6.5+).
	HardwareVersion string
	// SecureBoot sets bootOptions.efiSecureBootEnabled. The image's
	// systemd-boot is unsigned, so this is false unless the profile signs it.
	SecureBoot bool
	// GuestOS is the VMware guest OS identifier, e.g. ubuntu64Guest.
	GuestOS string
	// GuestOSID is the CIM OperatingSystemSection id (94 = Ubuntu 64-bit, 96 = Debian 64-bit).
	GuestOSID int
}

// Validate reports the first field of s that cannot describe a VM.
func (s Spec) Validate() error {
	switch {
	case s.Name == "" || strings.ContainsAny(s.Name, "/\\ \"<>&"):
		return fmt.Errorf("ova: spec.name %q: want a non-empty file-name-safe name", s.Name)
	case s.CPUs < 1 || s.CPUs > 128:
		return fmt.Errorf("ova: spec.cpus %d: want 1..128", s.CPUs)
	case s.MemoryMiB < 512 || s.MemoryMiB%4 != 0:
		return fmt.Errorf("ova: spec.memoryMiB %d: want at least 512 and a multiple of 4", s.MemoryMiB)
	case !strings.HasPrefix(s.HardwareVersion, "vmx-"):
		return fmt.Errorf("ova: spec.hardwareVersion %q: want vmx-N, e.g. vmx-13", s.HardwareVersion)
	case s.GuestOS == "":
		return fmt.Errorf("ova: spec.guestOS: want a VMware guest id such as ubuntu64Guest")
	}
	return nil
}

// disk is what the OVF says about the one disk.
type disk struct {
	File          string
	FileSize      int64 // size of the VMDK file
	Capacity      int64 // virtual size in bytes
	PopulatedSize int64 // bytes that hold data
}

var ovfTemplate = template.Must(template.New("ovf").Funcs(template.FuncMap{"xml": xmlEscape}).Parse(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="edgepair" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{{xml .Disk.File}}" ovf:id="file1" ovf:size="{{.Disk.FileSize}}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{{.Disk.Capacity}}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="{{.Disk.PopulatedSize}}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The LAN that carries the pair's addresses, VRRP and the virtual IP</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{{xml .Spec.Name}}">
    <Info>A virtual machine</Info>
    <Name>{{xml .Spec.Name}}</Name>
    <OperatingSystemSection ovf:id="{{.Spec.GuestOSID}}" vmw:osType="{{xml .Spec.GuestOS}}">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection ovf:transport="com.vmware.guestInfo">
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{{xml .Spec.Name}}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>{{xml .Spec.HardwareVersion}}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{{.Spec.CPUs}} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.Spec.CPUs}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{{.Spec.MemoryMiB}}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.Spec.MemoryMiB}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>Video card</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceType>24</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="{{.Spec.SecureBoot}}"/>
      <vmw:Config ovf:required="false" vmw:key="tools.syncTimeWithHost" vmw:value="false"/>
    </VirtualHardwareSection>
    <ProductSection>
      <Info>Information about the installed software and its per-machine settings</Info>
      <Product>{{xml .Spec.Product}}</Product>
      <Version>{{xml .Spec.Version}}</Version>
      <FullVersion>{{xml .Spec.Version}}</FullVersion>
      <Category>cloud-init seed (paste the values that "builder seed" wrote to guestinfo.env)</Category>
      <Property ovf:key="guestinfo.metadata" ovf:type="string" ovf:userConfigurable="true" ovf:value="">
        <Label>cloud-init meta-data</Label>
        <Description>Encoded meta-data for this node (guestinfo.env: guestinfo.metadata)</Description>
      </Property>
      <Property ovf:key="guestinfo.metadata.encoding" ovf:type="string" ovf:userConfigurable="true" ovf:value="gzip+base64">
        <Label>meta-data encoding</Label>
        <Description>gzip+base64, base64 or empty for plain text</Description>
      </Property>
      <Property ovf:key="guestinfo.userdata" ovf:type="string" ovf:userConfigurable="true" ovf:value="">
        <Label>cloud-init user-data</Label>
        <Description>Encoded user-data for this node (guestinfo.env: guestinfo.userdata)</Description>
      </Property>
      <Property ovf:key="guestinfo.userdata.encoding" ovf:type="string" ovf:userConfigurable="true" ovf:value="gzip+base64">
        <Label>user-data encoding</Label>
        <Description>gzip+base64, base64 or empty for plain text</Description>
      </Property>
    </ProductSection>
    <AnnotationSection>
      <Info>A human-readable annotation</Info>
      <Annotation>{{xml .Spec.Annotation}}</Annotation>
    </AnnotationSection>
  </VirtualSystem>
</Envelope>
`))

func xmlEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '&':
			b.WriteString("&amp;")
		case '"':
			b.WriteString("&quot;")
		case '\'':
			b.WriteString("&apos;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// renderOVF returns the OVF descriptor for spec and d.
func renderOVF(spec Spec, d disk) ([]byte, error) {
	var buf bytes.Buffer
	if err := ovfTemplate.Execute(&buf, struct {
		Spec Spec
		Disk disk
	}{spec, d}); err != nil {
		return nil, fmt.Errorf("ova: render OVF: %w", err)
	}
	return buf.Bytes(), nil
}
