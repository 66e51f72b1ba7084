//! Generates the KEDA ExternalScaler client and server from the vendored
//! proto. `protox` compiles the proto in pure Rust, so neither developers nor
//! CI need `protoc` installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/externalscaler.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
