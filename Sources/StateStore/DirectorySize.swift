import Foundation

extension StateDirectory {
    /// Bytes of the regular files in a directory (a store's database and journal files).
    package static func bytes(of path: String) -> Int64 {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { return 0 }
        var total: Int64 = 0
        for name in names {
            var info = stat()
            if lstat(path + "/" + name, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG { total += Int64(info.st_size) }
        }
        return total
    }
}
