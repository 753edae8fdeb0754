//! `uniffi-bindgen`: writes the Kotlin, Swift or Python sources of the
//! bindings from the built library (`generate --library <libbkv_client.so>
//! --language kotlin|swift|python --out-dir <dir>`).

fn main() {
    uniffi::uniffi_bindgen_main()
}
