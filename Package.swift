// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "polyglot",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "polyglot", targets: ["polyglot"]),
        .library(name: "Core", targets: ["Core"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // The optional traits (swift-configuration support, Foundation-only extras) are not used.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
    ],
    targets: [
        // System libraries: one module map and shim header each, as swift-nio's CNIOLinux and GRDB's SQLite target do.
        .systemLibrary(
            name: "CRdKafka",
            pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]
        ),
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        // Small C helpers with no Swift equivalent (a prefetch hint).
        .target(name: "CPolyglotShims"),
        .target(
            name: "Core",
            dependencies: [
                "CPolyglotShims",
                "CRdKafka",
                "CSQLite",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            // Overflow checks and preconditions stay on everywhere. The dynamic exclusivity
            // checks do not, in release builds of Core: on the per-record path (the line reader,
            // the output buffer, the card table and window store, all classes with mutable
            // state on one thread) they were 15% of replay's instructions: callgrind, replay
            // of 100,000 generated records, 465 M instructions with them, 382 M without
            // (361 M with -Ounchecked, which also dropped every overflow check).
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        .executableTarget(
            name: "polyglot",
            dependencies: [
                "Core",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            // jemalloc (Debian's libjemalloc2) serves every allocation of the process, librdkafka's
            // included: librdkafka allocates several times per output record and frees on other
            // threads, where glibc's allocator costs `process` more CPU per record
            // (scripts/bench-allocator.sh measures one binary with each allocator).
            linkerSettings: [.linkedLibrary("jemalloc", .when(platforms: [.linux]))]
        ),
        .testTarget(
            name: "CoreTests",
            dependencies: ["Core"]
        ),
        // Runs the built binary: exit codes, messages, stdin and stdout, a kill -9 and restart.
        // The dependency makes SwiftPM build the executable before these tests; Core hosts the
        // broker they talk to and reads what the binary wrote.
        .testTarget(
            name: "PolyglotCLITests",
            dependencies: ["polyglot", "Core"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
