"""Parts of the L3 (libvirt + QEMU) backend: kernel, initramfs, domain XML, virtio-fs staging, exec mux."""
