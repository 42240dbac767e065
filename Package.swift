// swift-tools-version:6.1
import PackageDescription

// Overflow checks and preconditions stay on everywhere. The dynamic exclusivity checks do not, in
// release builds of the targets that hold per-record code (the line reader and output buffer, the
// decoder, detectors, card table and window stores, the Kafka clients, the engine's collector and
// the roles' record handlers, all classes with mutable state on one thread): they were 15% of
// replay's instructions: callgrind, replay of 100,000 generated records, 465 M instructions with
// them, 382 M without (361 M with -Ounchecked, which also dropped every overflow check).
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "polyglot",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "polyglot", targets: ["polyglot"]),
        // What a program embedding the pipeline needs: the roles (they re-export nothing below).
        .library(name: "Polyglot", targets: ["Roles"]),
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

        // The library, lowest layer first: each target may import only targets above it in this
        // list (and only those it names as dependencies). `LayeringTests` reads this order and
        // fails when a source file imports a target declared below its own. C modules are
        // imported `internal` so their types never reach a public or package signature.
        //
        // Byte buffers, durations, files and lines, the one dedicated-thread helper and the lock
        // it uses, standard error, interruption, log numbers: no Kafka, no SQLite, no product
        // knowledge.
        .target(
            name: "PolyglotSupport",
            dependencies: [.product(name: "Logging", package: "swift-log")],
            swiftSettings: hotPath
        ),
        // The fraud model: the strict record reader and exact writer, decimals, the detectors
        // and their in-memory stores, the key partitioners, header names. No I/O, no C library
        // but the shims.
        .target(
            name: "FraudModel",
            dependencies: ["PolyglotSupport", "CPolyglotShims"],
            swiftSettings: hotPath
        ),
        // librdkafka's clients, admin, mock cluster and error model. Knows no product topic.
        .target(
            name: "KafkaClient",
            dependencies: [
                "PolyglotSupport",
                "CRdKafka",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: hotPath
        ),
        // SQLite and the checkpointed window stores built on it, with their changelog records.
        .target(
            name: "StateStore",
            dependencies: ["PolyglotSupport", "FraudModel", "CSQLite"],
            swiftSettings: hotPath
        ),
        // The stream engine every role runs on: polling, tasks, restore, transactions, commits,
        // `--until-end`, the health log.
        .target(
            name: "StreamEngine",
            dependencies: [
                "PolyglotSupport",
                "FraudModel",
                "KafkaClient",
                "StateStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: hotPath
        ),
        // Logs, metrics, the health and metrics endpoints, progress bars: observes the engine.
        .target(
            name: "Observability",
            dependencies: [
                "PolyglotSupport",
                "FraudModel",
                "KafkaClient",
                "StateStore",
                "StreamEngine",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        // The roles and what only they know: process, audit, replay, produce, demo, the dev
        // broker, the machine image, the settings table and the product's topic names.
        .target(
            name: "Roles",
            dependencies: [
                "PolyglotSupport",
                "FraudModel",
                "KafkaClient",
                "StateStore",
                "StreamEngine",
                "Observability",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: hotPath
        ),
        .executableTarget(
            name: "polyglot",
            dependencies: [
                "PolyglotSupport",
                "FraudModel",
                "KafkaClient",
                "StateStore",
                "StreamEngine",
                "Observability",
                "Roles",
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
            dependencies: ["PolyglotSupport", "FraudModel", "KafkaClient", "StateStore", "StreamEngine", "Observability", "Roles"]
        ),
        // Runs the built binary: exit codes, messages, stdin and stdout, a kill -9 and restart.
        // The dependency makes SwiftPM build the executable before these tests; the library hosts the
        // broker they talk to and reads what the binary wrote.
        .testTarget(
            name: "PolyglotCLITests",
            dependencies: ["polyglot", "PolyglotSupport", "KafkaClient", "Roles"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
