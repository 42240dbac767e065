import Foundation

/// `polyglot.pkr.hcl`: Packer HCL2 for amazon-ebs, laid out as `packer fmt` lays it out.
enum PackerTemplate {
    /// The official Debian AMIs' owner account and name pattern (the Debian cloud team's).
    static let debianOwner = "136693071363"
    static let debianNamePattern = "debian-12-amd64-*"

    static func render(_ options: ImageOptions) -> String {
        let pattern = ImageOptions.Pattern.self
        var out = """
        # \(ImageRenderer.banner(options))
        #
        # Bakes the polyglot machine image: the official Debian 12 AMI (the build
        # environment of the release binary, so glibc and librdkafka match), the one
        # binary, its hardened systemd unit and the fingerprint `polyglot image verify`
        # checks at every start. From the repository root, after a release build:
        #
        #   packer init image/
        #   packer build \\
        #     -var "binary_sha256=$(sha256sum .build-release/release/polyglot | cut -d' ' -f1)" \\
        #     -var "git_sha=$(git rev-parse HEAD)" \\
        #     image/

        packer {
          required_version = ">= 1.9.0"
          required_plugins {
            amazon = {
              source  = "github.com/hashicorp/amazon"
              version = ">= 1.3.0"
            }
          }
        }


        """
        out += variable(
            "region", type: "string", default: hcl(options.region),
            description: "AWS region to build in; the AMI is registered there.",
            condition: "can(regex(\(hcl(pattern.region)), var.region))",
            error: "The region must look like eu-central-1."
        )
        out += variable(
            "instance_type", type: "string", default: hcl(options.instanceType),
            description: "Instance type of the build instance (amd64, as the base AMI).",
            condition: "can(regex(\(hcl(pattern.instanceType)), var.instance_type))",
            error: "The instance type must look like t3.small."
        )
        out += variable(
            "version", type: "string", default: hcl(options.version),
            description: "The polyglot release the image carries.",
            condition: "can(regex(\(hcl(pattern.version)), var.version))",
            error: "The version must be a semantic version such as 1.2.3."
        )
        out += variable(
            "binary_path", type: "string", default: hcl(options.binaryPath),
            description: "The release binary (swift build -c release --static-swift-stdlib --scratch-path .build-release).",
            condition: "can(regex(\(hcl(pattern.binaryPath)), var.binary_path))",
            error: "The binary path must be a plain relative or absolute path."
        )
        out += variable(
            "binary_sha256", type: "string", default: options.binarySha256.map(hcl),
            description: "SHA-256 of the binary; provision.sh refuses any other file.",
            condition: "can(regex(\(hcl(pattern.sha256)), var.binary_sha256))",
            error: "The binary sha256 must be 64 lowercase hex digits."
        )
        out += variable(
            "git_sha", type: "string", default: options.gitSha.map(hcl),
            description: "Git commit the binary was built from.",
            condition: "can(regex(\(hcl(pattern.gitSha)), var.git_sha))",
            error: "The git sha must be 40 lowercase hex digits."
        )
        out += variable(
            "kms_key_id", type: "string", default: hcl(options.kmsKeyId),
            description: "KMS key (id, alias or ARN) of the root volume and the AMI; empty for the default EBS key.",
            condition: "var.kms_key_id == \"\" || can(regex(\(hcl(pattern.kmsKey)), var.kms_key_id))",
            error: "The KMS key must be empty, a key id, an alias/NAME or a KMS ARN."
        )
        out += variable(
            "source_ami", type: "string", default: hcl(options.sourceAMI),
            description: "An exact base AMI; empty for the newest official Debian 12 amd64 AMI.",
            condition: "var.source_ami == \"\" || can(regex(\(hcl(pattern.sourceAMI)), var.source_ami))",
            error: "The source AMI must be empty or an AMI id such as ami-0123456789abcdef0."
        )
        out += variable(
            "root_volume_size", type: "number", default: String(options.rootVolumeSize),
            description: "Root volume size in GiB.",
            condition: "var.root_volume_size >= \(ImageOptions.rootVolumeRange.lowerBound) && var.root_volume_size <= \(ImageOptions.rootVolumeRange.upperBound)",
            error: "The root volume size must be \(ImageOptions.rootVolumeRange.lowerBound) to \(ImageOptions.rootVolumeRange.upperBound) GiB."
        )
        out += variable(
            "deprecate_after", type: "string", default: hcl("\(options.deprecateAfterDays * 24)h"),
            description: "How long after the build the AMI is deprecated, in hours.",
            condition: "can(regex(\"^[1-9][0-9]*h$\", var.deprecate_after))",
            error: "The deprecation delay must be a whole number of hours such as 8760h."
        )
        out += variable(
            "vpc_id", type: "string", default: hcl(""),
            description: "VPC of the build instance; empty for the default VPC.",
            condition: "var.vpc_id == \"\" || can(regex(\(hcl(pattern.vpcID)), var.vpc_id))",
            error: "The VPC must be empty or an id such as vpc-0123456789abcdef0."
        )
        out += variable(
            "subnet_id", type: "string", default: hcl(""),
            description: "Subnet of the build instance (with a route to the internet for apt); empty for a default subnet.",
            condition: "var.subnet_id == \"\" || can(regex(\(hcl(pattern.subnetID)), var.subnet_id))",
            error: "The subnet must be empty or an id such as subnet-0123456789abcdef0."
        )
        out += variable(
            "security_group_id", type: "string", default: hcl(""),
            description: "Security group of the build instance; empty for a temporary one that admits SSH from this machine's public address only.",
            condition: "var.security_group_id == \"\" || can(regex(\(hcl(pattern.securityGroupID)), var.security_group_id))",
            error: "The security group must be empty or an id such as sg-0123456789abcdef0."
        )
        out += #"""
        locals {
          build_time = timestamp()
          ami_name   = "polyglot-${var.version}-${formatdate("YYYYMMDD-hhmmss", local.build_time)}"
          image_tags = {
            Name          = local.ami_name
            Application   = "polyglot"
            Version       = var.version
            GitSha        = var.git_sha
            BinarySha256  = var.binary_sha256
            SourceAMI     = "{{ .SourceAMI }}"
            SourceAMIName = "{{ .SourceAMIName }}"
          }
        }

        source "amazon-ebs" "debian12" {
          region          = var.region
          instance_type   = var.instance_type
          ami_name        = local.ami_name
          ami_description = "polyglot ${var.version} (${var.git_sha}) on Debian 12"
          deprecate_at    = timeadd(local.build_time, var.deprecate_after)
          tags            = local.image_tags
          snapshot_tags   = local.image_tags
          run_tags        = { Name = "packer-${local.ami_name}" }

          # Either the exact AMI asked for, or the newest official Debian 12 one.
          source_ami = var.source_ami
          dynamic "source_ami_filter" {
            for_each = var.source_ami == "" ? [1] : []
            content {
              filters = {
                name                = "\#(debianNamePattern)"
                architecture        = "x86_64"
                virtualization-type = "hvm"
                root-device-type    = "ebs"
              }
              owners      = ["\#(debianOwner)"]
              most_recent = true
            }
          }

          # Where the build instance runs (a subnet of your own must give it a public
          # address, or a route Packer can reach it by). Without a security group, Packer
          # creates a temporary one admitting SSH from the builder's public address only.
          vpc_id                                    = var.vpc_id
          subnet_id                                 = var.subnet_id
          security_group_id                         = var.security_group_id
          temporary_security_group_source_public_ip = true

          ssh_username            = "admin"
          temporary_key_pair_type = "ed25519"
          ena_support             = true

          # IMDSv2 only, on the build instance and on every instance of the AMI.
          imds_support = "v2.0"
          metadata_options {
            http_endpoint               = "enabled"
            http_tokens                 = "required"
            http_put_response_hop_limit = 1
          }

          # Encrypted root volume while baking, and an encrypted AMI.
          launch_block_device_mappings {
            device_name           = "/dev/xvda"
            volume_size           = var.root_volume_size
            volume_type           = "gp3"
            encrypted             = true
            kms_key_id            = var.kms_key_id
            delete_on_termination = true
          }
          encrypt_boot = true
          kms_key_id   = var.kms_key_id
        }

        build {
          name    = "polyglot"
          sources = ["source.amazon-ebs.debian12"]

          provisioner "shell" {
            inline = ["install -d -m 0700 /tmp/polyglot-image"]
          }

          provisioner "file" {
            source      = var.binary_path
            destination = "/tmp/polyglot-image/polyglot"
          }

          provisioner "file" {
            source      = "${path.root}/fetch-secrets.sh"
            destination = "/tmp/polyglot-image/fetch-secrets.sh"
          }

          provisioner "file" {
            source      = "${path.root}/polyglot@.service"
            destination = "/tmp/polyglot-image/polyglot@.service"
          }

          provisioner "file" {
            source      = "${path.root}/polyglot.env"
            destination = "/tmp/polyglot-image/polyglot.env"
          }

          # The same script the local bake runs in a chroot.
          provisioner "shell" {
            script           = "${path.root}/provision.sh"
            environment_vars = ["POLYGLOT_BINARY_SHA256=${var.binary_sha256}"]
            execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }} /tmp/polyglot-image"
          }

          provisioner "shell" {
            inline = ["sudo rm -rf /tmp/polyglot-image"]
          }

          post-processor "manifest" {
            output     = "packer-manifest.json"
            strip_path = true
            custom_data = {
              version       = var.version
              git_sha       = var.git_sha
              binary_sha256 = var.binary_sha256
            }
          }
        }

        """#
        return out
    }

    /// A typed variable with a description and one validation; no default makes it required.
    private static func variable(
        _ name: String, type: String, default value: String?, description: String, condition: String, error: String
    ) -> String {
        var lines = ["variable \"\(name)\" {", "  type        = \(type)"]
        if let value { lines.append("  default     = \(value)") }
        lines.append("  description = \(hcl(description))")
        lines += [
            "",
            "  validation {",
            "    condition     = \(condition)",
            "    error_message = \(hcl(error))",
            "  }",
            "}",
            "",
            "",
        ]
        return lines.joined(separator: "\n")
    }

    /// An HCL quoted string: escapes `\` and `"`, and doubles the `$` / `%` of `${` / `%{` so
    /// nothing in a value is taken for an interpolation.
    static func hcl(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        out = out.replacingOccurrences(of: "${", with: "$${").replacingOccurrences(of: "%{", with: "%%{")
        return "\"" + out + "\""
    }
}
