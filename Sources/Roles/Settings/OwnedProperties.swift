import StreamEngine

// The runtime sets these itself; which setting replaces each is the settings table's to say, so
// the refusal text lives beside it rather than in the engine.
extension RuntimeConfiguration {
    /// librdkafka properties the runtime sets itself: a `-X` for one of them is refused, with
    /// the setting to use instead.
    public static let ownedProperties: [String: String] = [
        "bootstrap.servers": instead(.bootstrapServers),
        "group.id": "\(instead(.applicationID)) (audit: \(instead(.auditGroup)))",
        "transactional.id": instead(.instanceID),
        "isolation.level": instead(.guarantee),
        "enable.auto.commit": "(offsets commit with the state)",
        "enable.auto.offset.store": "(offsets commit with the state)",
    ]

    private static func instead(_ setting: Setting) -> String { "\(setting.flag) or \(setting.variable)" }
}
