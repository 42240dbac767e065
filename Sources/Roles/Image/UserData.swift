import PolyglotSupport

/// `user-data-<role>.yaml`: cloud-init user data for one role's Auto Scaling Group.
enum UserData {
    /// The values user data carries, as text: real values for the files `image render`
    /// writes, or CloudFormation `${Parameter}` references for the fleet template.
    struct Values {
        var bootstrapServers: String
        var region: String
        var secretsParameterPath: String

        init(_ options: ImageOptions) {
            bootstrapServers = options.bootstrapServers
            region = options.region
            secretsParameterPath = options.secretsParameterPath
        }

        init(bootstrapServers: String, region: String, secretsParameterPath: String) {
            self.bootstrapServers = bootstrapServers
            self.region = region
            self.secretsParameterPath = secretsParameterPath
        }
    }

    static func render(_ options: ImageOptions, role: String) -> String {
        render(options, role: role, values: Values(options))
    }

    static func render(_ options: ImageOptions, role: String, values: Values) -> String {
        """
        #cloud-config
        # \(ImageRenderer.banner(options))
        #
        # User data of the Auto Scaling Group running the `\(role)` role on the polyglot
        # image: writes this group's settings, which override /etc/polyglot/polyglot.env,
        # and where its Kafka secrets are (read at every start through the instance
        # profile, never written here), then enables and starts polyglot@\(role).service.
        write_files:
          - path: /etc/polyglot/\(role).env
            owner: root:root
            permissions: "0600"
            content: |
              # Settings of the `\(role)` role; same syntax and names as
              # /etc/polyglot/polyglot.env, which documents each of them.
              KAFKA_BOOTSTRAP_SERVERS=\(values.bootstrapServers)
          - path: \(SecretsScript.sourceFile)
            owner: root:root
            permissions: "0600"
            content: |
              # SSM Parameter Store path of the Kafka secrets (empty: none).
              AWS_REGION=\(values.region)
              PARAMETER_PATH=\(values.secretsParameterPath)
        runcmd:
          - [systemctl, enable, --now, polyglot@\(role).service]

        """
    }
}

/// `polyglot.env`: the environment file of the unit, every setting the long-running roles read
/// documented from ``Setting/all``.
enum EnvironmentFile {
    /// The settings documented: every one `process` or `audit` reads.
    static var settings: [Setting] { Setting.all.filter { !$0.roles.isDisjoint(with: Setting.runtimeRoles) } }

    static func render(_ options: ImageOptions) -> String {
        var text = """
        # \(ImageRenderer.banner(options))
        #
        # Settings of both polyglot roles, read by polyglot@.service. Installed as
        # /etc/polyglot/polyglot.env (mode 0600: it may hold credentials). A role's
        # /etc/polyglot/<role>.env, written by its Auto Scaling Group's user data, is
        # read after this file and overrides it; command-line flags override both.
        #
        # Syntax: KEY=VALUE, one per line, no shell expansion. Durations take an ms,
        # s, m or h suffix, or several from largest to smallest (1m30s); a bare integer
        # means milliseconds. A setting left commented out takes the default shown; an
        # empty value is the same as leaving it out.

        """
        for section in Setting.Section.allCases {
            let settings = settings.filter { $0.section == section }
            guard !settings.isEmpty else { continue }
            text += "\n# ---- \(section.rawValue) ----\n"
            for setting in settings {
                text += "\n"
                for line in wrap([setting.help, setting.notes].compactMap { $0 }.joined(separator: " ")) {
                    text += "# \(line)\n"
                }
                if setting == .bootstrapServers {
                    text += "\(setting.variable)=\(options.bootstrapServers)\n"
                } else {
                    text += "#\(setting.variable)=\(setting.defaultText)\n"
                }
            }
        }
        return text
    }

    /// Words into lines of at most `width` characters (a longer word gets a line of its own).
    static func wrap(_ text: String, width: Int = 76) -> [String] {
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty, line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += line.isEmpty ? String(word) : " " + word
        }
        if !line.isEmpty { lines.append(line) }
        return lines
    }
}
