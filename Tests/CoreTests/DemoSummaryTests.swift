import Testing
@testable import Roles

/// The demo's exit status is its summary's `isClean` (exit 1 when not): every kind of
/// discrepancy makes it dirty, and the informational counts do not.
@Suite("Demo summary")
struct DemoSummaryTests {
    func summary(_ audit: AuditCounts) -> DemoSummary {
        DemoSummary(records: 10, outputs: 10, flagged: 0, rejectedByCode: [:], audit: audit, seconds: 1)
    }

    @Test func everyDiscrepancyMakesTheDemoDirty() {
        var informational = AuditCounts()
        informational.inputs = 10
        informational.outputs = 10
        informational.highValue = 3
        informational.flagged = 2
        #expect(summary(informational).isClean)
        #expect(summary(informational).text.contains("audit: clean"))
        let failingKinds: [WritableKeyPath<AuditCounts, Int>] = [\.missing, \.duplicate, \.orphan, \.mismatch, \.drift, \.unreadable]
        for kind in failingKinds {
            var audit = informational
            audit[keyPath: kind] = 1
            #expect(!summary(audit).isClean, "\(kind)")
            #expect(summary(audit).text.contains("audit: DISCREPANCIES"), "\(kind)")
        }
    }
}
