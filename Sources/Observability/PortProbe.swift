#if canImport(Glibc)
import Glibc
#endif
import PolyglotSupport

/// Checks that a TCP port can be listened on before a server is started on it: the server's own
/// failure comes late (the role has started), in several lines, as a socket call's name and an
/// errno; this one names the port and the flag that sets it.
public enum PortProbe {
    /// Whether `text` is an IPv4 or IPv6 address.
    public static func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }

    /// Binds `address`:`port` and lets it go again, as the server will bind it (address reuse
    /// on, so a port in TIME_WAIT is free). `flag` is the setting that chose the port, for the
    /// message. Port 0 (any free port) always succeeds.
    public static func checkAvailable(address: String, port: Int, flag: String) throws(ObservabilityError) {
        guard port > 0 else { return }
        var v4 = in_addr(), v6 = in6_addr()
        let family: Int32
        if inet_pton(AF_INET, address, &v4) == 1 {
            family = AF_INET
        } else if inet_pton(AF_INET6, address, &v6) == 1 {
            family = AF_INET6
        } else {
            throw ObservabilityError(.listenFailed, "cannot serve /metrics and /healthz on \(address): not an IP address")
        }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return }  // No socket to probe with: the server reports its own failure.
        defer { close(fd) }
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        let result: Int32
        if family == AF_INET {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = in_port_t(UInt16(port).bigEndian)
            sa.sin_addr = v4
            result = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        } else {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = in_port_t(UInt16(port).bigEndian)
            sa.sin6_addr = v6
            result = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        guard result != 0 else { return }
        throw failure(address: address, port: port, flag: flag, errno: errno)
    }

    /// The one-line failure for a bind that failed with `errno`.
    static func failure(address: String, port: Int, flag: String, errno code: Int32) -> ObservabilityError {
        let reason = switch code {
        case EADDRINUSE: "port \(port) is in use on \(address) (another polyglot on this host?)"
        case EACCES: "port \(port) needs privileges this process lacks"
        case EADDRNOTAVAIL: "\(address) is not an address of this host"
        default: String(cString: strerror(code))
        }
        let remedy = code == EADDRNOTAVAIL ? "give one of its addresses, or \(ObservabilityServer.everyInterface)" : "choose another port with \(flag), or 0 to turn them off"
        return ObservabilityError(.listenFailed, "cannot serve /metrics and /healthz on \(address):\(port): \(reason); \(remedy)")
    }
}
