//! Generates Envoy's ExternalProcessor server and client from the vendored
//! upstream protos (see proto/README.md). `protox` compiles them in pure
//! Rust, so neither developers nor CI need `protoc` installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/envoy/service/ext_proc/v3/external_processor.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
