import Foundation
import Testing

/// The package's layers: `Package.swift` lists the library targets lowest first, and a source
/// file may import only a target listed above its own that its target names as a dependency.
/// SwiftPM alone does not hold this (a module built earlier in the same build can be imported
/// without being declared), so this suite reads the manifest and every source's imports.
@Suite struct LayeringTests {
    /// One target of the manifest, in declaration order.
    struct Target: Equatable {
        var name: String
        var dependencies: [String]
        var isSystemLibrary: Bool
    }

    /// One import that breaks the layering, as a line a reader can act on.
    struct Violation: CustomStringConvertible, Equatable {
        var file: String
        var line: Int
        var text: String
        var description: String { "\(file):\(line): \(text)" }
    }

    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The targets of a manifest in the order declared, with the target names among their dependencies.
    static func targets(manifest: String) -> [Target] {
        let declaration = /\.(target|executableTarget|systemLibrary|testTarget)\(\s*name:\s*"([A-Za-z0-9_]+)"/
        let matches = manifest.matches(of: declaration)
        return matches.enumerated().map { index, match in
            let end = index + 1 < matches.count ? matches[index + 1].range.lowerBound : manifest.endIndex
            let body = manifest[match.range.upperBound..<end]
            var dependencies: [String] = []
            if let list = body.firstMatch(of: /dependencies:\s*\[/) {
                var depth = 1
                var cursor = list.range.upperBound
                while cursor < body.endIndex, depth > 0 {
                    if body[cursor] == "[" { depth += 1 } else if body[cursor] == "]" { depth -= 1 }
                    cursor = body.index(after: cursor)
                }
                let text = body[list.range.upperBound..<cursor]
                // Bare strings are targets of this package; `.product(...)` entries are other packages'.
                let withoutProducts = text.replacing(/\.product\([^)]*\)/, with: "")
                dependencies = withoutProducts.matches(of: /"([A-Za-z0-9_]+)"/).map { String($0.output.1) }
            }
            return Target(name: String(match.output.2), dependencies: dependencies,
                          isSystemLibrary: match.output.1 == "systemLibrary")
        }
    }

    /// The imports of one source file that break the layering of `targets` for `target`.
    static func violations(in source: String, file: String, of target: String, targets: [Target]) -> [Violation] {
        guard let own = targets.firstIndex(where: { $0.name == target }) else { return [] }
        let importLine = /^\s*(?:@\w+\s+)*(?:(internal|public|package|private|fileprivate)\s+)?import\s+(?:(?:struct|class|enum|protocol|func|var|let|typealias)\s+)?([A-Za-z0-9_]+)/
        var found: [Violation] = []
        for (number, line) in source.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            guard let match = try? importLine.firstMatch(in: line) else { continue }
            let module = String(match.output.2)
            guard let index = targets.firstIndex(where: { $0.name == module }) else { continue }
            let here = Violation(file: file, line: number + 1, text: String(line))
            if index >= own {
                found.append(Violation(file: here.file, line: here.line,
                                       text: "\(target) imports \(module), which is declared after it: \(line)"))
            } else if !targets[own].dependencies.contains(module) {
                found.append(Violation(file: here.file, line: here.line,
                                       text: "\(target) imports \(module) without naming it as a dependency: \(line)"))
            } else if targets[index].isSystemLibrary, match.output.1 != "internal" {
                found.append(Violation(file: here.file, line: here.line,
                                       text: "\(target) imports the C module \(module) without `internal`: \(line)"))
            }
        }
        return found
    }

    @Test func everySourceImportsOnlyLowerDeclaredTargets() throws {
        let manifest = try String(contentsOf: Self.packageRoot.appendingPathComponent("Package.swift"), encoding: .utf8)
        let targets = Self.targets(manifest: manifest)
        let sources = Self.packageRoot.appendingPathComponent("Sources")
        var checked = 0
        var found: [Violation] = []
        for target in targets where !target.isSystemLibrary {
            let directory = sources.appendingPathComponent(target.name)
            guard let walker = FileManager.default.enumerator(atPath: directory.path) else { continue }
            for case let relative as String in walker where relative.hasSuffix(".swift") {
                let source = try String(contentsOfFile: directory.appendingPathComponent(relative).path, encoding: .utf8)
                found += Self.violations(in: source, file: "Sources/\(target.name)/\(relative)", of: target.name, targets: targets)
                checked += 1
            }
        }
        #expect(checked > 50, "found only \(checked) sources below \(sources.path)")
        #expect(targets.map(\.name).contains("polyglot"))
        #expect(found.isEmpty, "\(found.map(\.description).joined(separator: "\n"))")
    }

    /// A file over 600 lines holds more than one job: split it along them.
    @Test func noSwiftFileIsOver600Lines() throws {
        var long: [String] = []
        for folder in ["Sources", "Tests"] {
            let directory = Self.packageRoot.appendingPathComponent(folder)
            guard let walker = FileManager.default.enumerator(atPath: directory.path) else { continue }
            for case let relative as String in walker where relative.hasSuffix(".swift") {
                let text = try String(contentsOfFile: directory.appendingPathComponent(relative).path, encoding: .utf8)
                let lines = text.split(separator: "\n", omittingEmptySubsequences: false).count - (text.hasSuffix("\n") ? 1 : 0)
                if lines > 600 { long.append("\(folder)/\(relative): \(lines) lines") }
            }
        }
        #expect(long.isEmpty, "\(long.joined(separator: "\n"))")
    }

    @Test func theLibraryTargetsAreDeclaredLowestFirst() throws {
        let manifest = try String(contentsOf: Self.packageRoot.appendingPathComponent("Package.swift"), encoding: .utf8)
        let names = Self.targets(manifest: manifest).map(\.name)
        let layers = ["PolyglotSupport", "FraudModel", "KafkaClient", "StateStore", "StreamEngine", "Observability", "Roles", "polyglot"]
        #expect(layers.compactMap { names.firstIndex(of: $0) } == layers.compactMap { names.firstIndex(of: $0) }.sorted())
        #expect(layers.allSatisfy(names.contains))
    }

    @Test func anUpwardOrUndeclaredImportIsFound() {
        let manifest = """
            targets: [
                .systemLibrary(name: "CLib", pkgConfig: "lib"),
                .target(name: "Low", dependencies: ["CLib", .product(name: "Logging", package: "swift-log")]),
                .target(name: "Middle", dependencies: ["Low"]),
                .target(name: "High", dependencies: ["Middle"]),
            ]
            """
        let targets = Self.targets(manifest: manifest)
        #expect(targets.map(\.name) == ["CLib", "Low", "Middle", "High"])
        #expect(targets[1].dependencies == ["CLib"])
        let fine = "import Foundation\ninternal import CLib\nimport Logging\n"
        #expect(Self.violations(in: fine, file: "a.swift", of: "Low", targets: targets).isEmpty)
        let upward = "import Foundation\n@testable import Middle\n"
        #expect(Self.violations(in: upward, file: "a.swift", of: "Low", targets: targets).map(\.line) == [2])
        let undeclared = "import Middle\nimport Low\n"
        #expect(Self.violations(in: undeclared, file: "a.swift", of: "High", targets: targets).map(\.line) == [2])
        let leakingC = "import CLib\n"
        #expect(Self.violations(in: leakingC, file: "a.swift", of: "Low", targets: targets).count == 1)
    }
}
