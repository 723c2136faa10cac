# The cell AMI: Debian 12, FFmpeg, the static cellfarm binary, and a systemd unit that
# starts a cell at boot with the config named in the instance's user data.
#
#   scripts/build-static.sh                      # release build; prints the binary's path
#   packer build -var region=eu-west-1 ami/      # needs AWS credentials
#
# Written for Packer 1.6 (Debian 12's `packer`), where the amazon-ebs builder is built
# in. Packer 1.7 and later also read it; 1.10 and later first need the Amazon plugin
# (`packer plugins install github.com/hashicorp/amazon`), since a `required_plugins`
# block would make 1.6 reject the file.

packer {
  required_version = ">= 1.6.0"
}

variable "region" {
  type        = string
  description = "AWS region the AMI is built and registered in."
  default     = "us-east-1"
}

variable "source_ami_name" {
  type        = string
  description = "Name filter of the base image: Debian 12 (bookworm) for x86_64, the newest match wins."
  default     = "debian-12-amd64-*"
}

variable "source_ami_owner" {
  type        = string
  description = "Account that publishes the base image: the Debian cloud team's."
  default     = "136693071363"
}

variable "instance_type" {
  type        = string
  description = "Instance that builds the image (x86_64: the binary is x86_64-unknown-linux-musl)."
  default     = "t3.small"
}

variable "binary" {
  type        = string
  description = "Static cellfarm binary to install, as printed by scripts/build-static.sh."
  default     = "/var/tmp/cellfarm-target/x86_64-unknown-linux-musl/release/cellfarm"
}

variable "ami_name_prefix" {
  type        = string
  description = "AMIs are named <prefix>-<UTC build time>."
  default     = "cellfarm"
}

locals {
  # 2024-05-01T12:34:56Z -> 20240501123456: AMI names allow no colons.
  stamp = regex_replace(timestamp(), "[-:TZ]", "")
}

source "amazon-ebs" "cell" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = "admin"
  ami_name      = "${var.ami_name_prefix}-${local.stamp}"

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.source_ami_owner]
    most_recent = true
  }

  tags = {
    Name     = "${var.ami_name_prefix}-${local.stamp}"
    cellfarm = "cell"
  }
}

build {
  sources = ["source.amazon-ebs.cell"]

  provisioner "shell" {
    inline = [
      # cloud-init may still be running apt on first boot.
      "cloud-init status --wait >/dev/null || true",
      "sudo apt-get update -qq",
      # nftables: the metadata firewall rule; polkitd and dbus: the poweroff fallback.
      "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg curl ca-certificates nftables polkitd dbus",
      "sudo apt-get clean",
    ]
  }

  # The file provisioner writes as the SSH user: stage in /tmp, then install as root.
  provisioner "file" {
    source      = var.binary
    destination = "/tmp/cellfarm"
  }

  provisioner "file" {
    source      = "${path.root}/cellfarm-boot.sh"
    destination = "/tmp/cellfarm-boot"
  }

  provisioner "file" {
    source      = "${path.root}/cellfarm.service"
    destination = "/tmp/cellfarm.service"
  }

  provisioner "file" {
    source      = "${path.root}/imds.nft"
    destination = "/tmp/imds.nft"
  }

  provisioner "file" {
    source      = "${path.root}/cellfarm-poweroff.rules"
    destination = "/tmp/cellfarm-poweroff.rules"
  }

  provisioner "shell" {
    inline = [
      "sudo install -m 0755 /tmp/cellfarm /usr/local/bin/cellfarm",
      "sudo install -m 0755 /tmp/cellfarm-boot /usr/local/bin/cellfarm-boot",
      "sudo install -m 0644 /tmp/cellfarm.service /etc/systemd/system/cellfarm.service",
      # The cell's own user: no login, no home, owns the scratch directory.
      "sudo useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin cellfarm",
      "sudo install -d -m 0755 /etc/cellfarm",
      "sudo install -m 0644 /tmp/imds.nft /etc/cellfarm/imds.nft",
      "sudo install -m 0644 /tmp/cellfarm-poweroff.rules /etc/polkit-1/rules.d/50-cellfarm-poweroff.rules",
      "rm -f /tmp/cellfarm /tmp/cellfarm-boot /tmp/cellfarm.service /tmp/imds.nft /tmp/cellfarm-poweroff.rules",
      # Landlock, for the FFmpeg sandbox: Debian 12's kernel has it but may not enable it.
      "grep -qw landlock /sys/kernel/security/lsm || { sudo sed -i 's/^GRUB_CMDLINE_LINUX=\"/GRUB_CMDLINE_LINUX=\"lsm=landlock,lockdown,yama,integrity,apparmor,bpf /' /etc/default/grub && sudo update-grub; }",
      "sudo systemctl daemon-reload",
      "sudo systemctl enable cellfarm.service",
      # Fail the build now, not at the first boot: the binary runs, FFmpeg is there.
      "/usr/local/bin/cellfarm --version",
      "sudo nft -c -f /etc/cellfarm/imds.nft",
      "ffmpeg -hide_banner -version | head -n 1",
      "ffprobe -hide_banner -version | head -n 1",
    ]
  }
}
