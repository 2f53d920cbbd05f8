//! Writes the CRD YAML (`crds/tenant.yaml`, `crds/pool.yaml`) from the Rust types.
fn main() -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, content) in ringstore_crds::generated()? {
        std::fs::write(dir.join(file), content)?;
        println!("wrote crds/{file}");
    }
    Ok(())
}
