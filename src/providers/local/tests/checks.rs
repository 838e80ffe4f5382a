//! What the host must have (the tools a build needs) and how a failure
//! message maps to its category.

use super::*;

#[test]
fn the_tools_are_installed_here() {
    use super::super::ToolNeed::*;
    assert_eq!(
        LocalProvider::missing_tools(&[Build, Boot, DebianImport, BusyboxImport]),
        Vec::<String>::new()
    );
}

#[test]
fn classify_reads_the_category_prefix() {
    assert_eq!(
        classify("customizer: step 'x' exited with 1: …"),
        FailureCategory::Customizer
    );
    assert_eq!(classify("timeout: …"), FailureCategory::Timeout);
    assert_eq!(classify("validation: …"), FailureCategory::Validation);
    assert_eq!(classify("network: injected"), FailureCategory::Network);
    assert_eq!(
        classify("orphaned: the process running this build exited"),
        FailureCategory::Transient
    );
    assert_eq!(classify("replication: x"), FailureCategory::Replication);
    assert_eq!(classify("something odd"), FailureCategory::Internal);
}
