//! The checked-in `crds/` are exactly what the Rust types generate, and what `crd` prints.
//! Regenerate with `cargo run -- crd --out-dir crds`.

use std::path::Path;
use std::process::Command;

use confluence_auth_operator::crd;

fn checked_in(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn checked_in_crds_match_the_rust_types() {
    for definition in crd::all() {
        let name = crd::file_name(&definition);
        assert!(
            checked_in(&name) == crd::render(&definition),
            "crds/{name} drifted from the Rust types: run `cargo run -- crd --out-dir crds` and commit"
        );
    }
}

#[test]
fn crd_subcommand_prints_the_checked_in_files_byte_for_byte() {
    let output = Command::new(env!("CARGO_BIN_EXE_confluence-auth-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let expected = checked_in("confluenceinstallations.yaml") + &checked_in("confluenceuserauths.yaml");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), expected);
}

#[test]
fn crd_files_are_exactly_the_two_kinds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["confluenceinstallations.yaml", "confluenceuserauths.yaml"]);
}

#[test]
fn both_kinds_carry_the_names_columns_and_subresource_the_design_fixes() {
    let columns_of = [
        (
            "cfi",
            vec![
                ("Ready", 0),
                ("Phase", 0),
                ("Site", 0),
                ("Expires", 0),
                ("Age", 0),
                ("Grant", 1),
                ("Next Refresh", 1),
                ("Refresh Token Expires", 1),
            ],
        ),
        (
            "cfua",
            vec![
                ("Ready", 0),
                ("Phase", 0),
                ("Site", 0),
                ("Account", 0),
                ("Expires", 0),
                ("Age", 0),
                ("Installation", 1),
                ("User", 1),
                ("Account ID", 1),
                ("Next Refresh", 1),
                ("Refresh Token Expires", 1),
            ],
        ),
    ];
    for (definition, (short, expected_columns)) in crd::all().iter().zip(columns_of) {
        assert_eq!(definition.spec.group, "confluence-auth.dev");
        assert_eq!(definition.spec.scope, "Namespaced");
        assert_eq!(
            definition.spec.names.short_names.as_deref(),
            Some(&[short.to_string()][..])
        );
        assert_eq!(
            definition.spec.names.categories.as_deref(),
            Some(&["confluence-auth".to_string()][..])
        );
        let version = &definition.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let columns: Vec<_> = version.additional_printer_columns.iter().flatten().collect();
        let names: Vec<(&str, i32)> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.priority.unwrap_or(0)))
            .collect();
        assert_eq!(names, expected_columns, "{short}");
        // A `date` column prints the time since an instant; a future instant (an expiry) would
        // read `<invalid>` on a real server. Only the creation time may be a date.
        for c in &columns {
            assert_eq!(
                c.type_ == "date",
                c.json_path == ".metadata.creationTimestamp",
                "{short} column {}",
                c.name
            );
        }
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    }
}

#[test]
fn conditions_are_a_map_list_keyed_on_type() {
    for definition in crd::all() {
        let schema = serde_json::to_value(&definition.spec.versions[0].schema).unwrap();
        let conditions = &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
    }
}
