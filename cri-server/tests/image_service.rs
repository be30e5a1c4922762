//! ImageService against a real docker-registry on 127.0.0.1: pull (index, OCI and Docker
//! manifests, gzip / zstd / plain layers), basic auth, hosts.toml mirrors, list, status, remove, GC.
#![allow(clippy::unwrap_used)]

mod image_support;

use std::sync::Arc;

use base64::Engine;
use cri_server::error::Error;
use cri_server::image::manager::ImageManager;
use cri_server::image::registry::Credentials;
use cri_server::image::ImageHandlers;
use image_support::*;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::Request;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn small_image(marker: &str, docker: bool) -> TestImage {
    let a = format!("a-{marker}");
    build_image(
        host_arch(),
        &[(Comp::Gzip, vec![("etc/marker", a.as_bytes())])],
        &["/bin/sh"],
        "nobody",
        docker,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_remove_over_plain_http_localhost() {
    let registry = Registry::start(None);
    let host = build_image(
        host_arch(),
        &[
            (
                Comp::Gzip,
                vec![
                    ("bin/hello", b"hello".as_slice()),
                    ("etc/os-release", b"ID=berth".as_slice()),
                ],
            ),
            (
                Comp::Tar,
                vec![("etc/passwd", b"root:x:0:0::/root:/bin/sh\n".as_slice())],
            ),
            (Comp::Zstd, vec![("data/z", b"zstd layer".as_slice())]),
        ],
        &["/bin/hello", "world"],
        "1000:1000",
        false,
    );
    let other = build_image(
        "s390x",
        &[(Comp::Gzip, vec![("other", b"s390x".as_slice())])],
        &["x"],
        "",
        false,
    );
    let other_config = other.id.clone();
    let index = build_index(host, vec![(other, "s390x")]);
    registry.push_image("test/app", "1", &index);

    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let images = Arc::new(ImageManager::open(&config).await.unwrap());
    let name = format!("{}/test/app:1", registry.addr);

    // No hosts.toml: https is tried first, then plain http because the registry is loopback.
    let record = images.pull(&name, &Credentials::default()).await.unwrap();
    assert_eq!(record.id, index.id);
    assert_eq!(record.repo_tags, vec![name.clone()]);
    assert_eq!(
        record.repo_digests,
        vec![format!("{}/test/app@{}", registry.addr, index.digest)]
    );
    assert_eq!(record.chain_ids.len(), 3);
    assert_eq!(record.config.cmd, vec!["/bin/hello", "world"]);
    assert_eq!(record.config.user, "1000:1000");
    assert_eq!(record.config.volumes, vec!["/data"]);
    assert_eq!(record.config.stop_signal, "SIGQUIT");
    assert!(images
        .snapshotter()
        .has_committed(record.top_chain_id().unwrap()));
    for blob in &record.blobs {
        assert!(images.content().contains(blob), "blob {blob} missing");
    }
    assert!(
        record.blobs.contains(&index.digest),
        "index is kept for GC accounting"
    );
    assert!(
        !images.content().contains(&other_config),
        "other platforms are not downloaded"
    );

    // Pulling again, and by digest, finds the same image and merges names.
    let again = images.pull(&name, &Credentials::default()).await.unwrap();
    assert_eq!(again.id, record.id);
    let by_digest = format!("{}/test/app@{}", registry.addr, index.digest);
    let again = images
        .pull(&by_digest, &Credentials::default())
        .await
        .unwrap();
    assert_eq!(again.repo_tags, vec![name.clone()]);
    assert_eq!(again.repo_digests.len(), 1);

    let handlers = ImageHandlers::new(images.clone());
    let list = handlers
        .list_images(Request::new(ListImagesRequest { filter: None }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.images.len(), 1);
    assert_eq!(list.images[0].uid, Some(Int64Value { value: 1000 }));
    let filtered = handlers
        .list_images(Request::new(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&by_digest),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.images.len(), 1);
    let none = handlers
        .list_images(Request::new(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec("nope:1"),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(none.images.is_empty());

    let status = handlers
        .image_status(Request::new(ImageStatusRequest {
            image: spec(&record.id[7..19]),
            verbose: true,
        }))
        .await
        .unwrap()
        .into_inner();
    let image = status.image.unwrap();
    assert_eq!(image.id, record.id);
    assert!(image.size > 0);
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["architecture"], host_arch());
    assert_eq!(info["chainID"], record.top_chain_id().unwrap());
    let missing = handlers
        .image_status(Request::new(ImageStatusRequest {
            image: spec("missing:1"),
            verbose: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(missing.image.is_none());

    let fs = handlers
        .image_fs_info(Request::new(ImageFsInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.unwrap().value > 0);
    assert!(usage.inodes_used.unwrap().value > 0);
    assert!(usage
        .fs_id
        .as_ref()
        .unwrap()
        .mountpoint
        .ends_with("root/snapshots"));
    assert!(usage.timestamp > 0);
    assert_eq!(fs.container_filesystems.len(), 1);

    // Remove by its only tag: record, blobs and snapshots go. Removing again is fine.
    handlers
        .remove_image(Request::new(RemoveImageRequest { image: spec(&name) }))
        .await
        .unwrap();
    handlers
        .remove_image(Request::new(RemoveImageRequest { image: spec(&name) }))
        .await
        .unwrap();
    assert!(images.list().is_empty());
    for blob in &record.blobs {
        assert!(!images.content().contains(blob), "blob {blob} left behind");
    }
    for chain in &record.chain_ids {
        assert!(
            !images.snapshotter().has_committed(chain),
            "snapshot {chain} left behind"
        );
    }
    assert!(images.content().list().unwrap().is_empty());
    // Records persisted on disk are gone too.
    drop(handlers);
    let reopened = ImageManager::open(&config).await.unwrap();
    assert!(reopened.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth() {
    let registry = Registry::start(Some(("berth", "s3cret")));
    let image = small_image("auth", true);
    registry.push_image("private/app", "v1", &image);
    let dir = tempfile::tempdir().unwrap();
    let images = ImageManager::open(&config_in(dir.path())).await.unwrap();
    let name = format!("{}/private/app:v1", registry.addr);

    let err = images
        .pull(&name, &Credentials::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("401 Unauthorized"), "{err}");
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::Unauthenticated
    );

    let wrong = AuthConfig {
        username: "berth".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = images
        .pull(&name, &Credentials::from_cri(Some(&wrong)).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");

    let scoped_elsewhere = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("berth:s3cret"),
        server_address: "other.example".into(),
        ..Default::default()
    };
    let err = images
        .pull(
            &name,
            &Credentials::from_cri(Some(&scoped_elsewhere)).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(_)),
        "credentials for another server must not be sent"
    );

    let good = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("berth:s3cret"),
        server_address: registry.addr.clone(),
        ..Default::default()
    };
    let record = images
        .pull(&name, &Credentials::from_cri(Some(&good)).unwrap())
        .await
        .unwrap();
    assert_eq!(record.id, image.id);
    assert_eq!(
        record.repo_digests,
        vec![format!("{}/private/app@{}", registry.addr, image.digest)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_toml_mirror_for_an_unreachable_upstream() {
    let registry = Registry::start(None);
    let image = small_image("mirror", false);
    registry.push_image("team/app", "2", &image);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    write_hosts_toml(
        &config,
        "registry.invalid",
        &format!(
            "server = \"https://registry.invalid\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.addr
        ),
    );
    let images = ImageManager::open(&config).await.unwrap();
    let record = images
        .pull("registry.invalid/team/app:2", &Credentials::default())
        .await
        .unwrap();
    assert_eq!(record.id, image.id);
    assert_eq!(record.repo_tags, vec!["registry.invalid/team/app:2"]);
    assert_eq!(
        images.resolve("registry.invalid/team/app:2").unwrap().id,
        image.id
    );

    // The mirror answers 404 and the upstream is unreachable: the 404 is what is reported.
    let err = images
        .pull("registry.invalid/team/none:1", &Credentials::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("registry.invalid/team/none:1 not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_are_classified() {
    let registry = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let images = ImageManager::open(&config_in(dir.path())).await.unwrap();

    let err = images
        .pull(
            &format!("{}/library/nope:1", registry.addr),
            &Credentials::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::NotFound);

    let closed = format!("127.0.0.1:{}/x:1", free_port());
    let err = images
        .pull(&closed, &Credentials::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");

    let err = images
        .pull("Not A Reference", &Credentials::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(images.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_tag_moves_and_shared_layers() {
    let registry = Registry::start(None);
    let base: &[u8] = b"shared base layer";
    let v1 = build_image(
        host_arch(),
        &[
            (Comp::Gzip, vec![("base", base)]),
            (Comp::Gzip, vec![("v", b"one".as_slice())]),
        ],
        &["sh"],
        "",
        false,
    );
    let v2 = build_image(
        host_arch(),
        &[
            (Comp::Gzip, vec![("base", base)]),
            (Comp::Gzip, vec![("v", b"two".as_slice())]),
        ],
        &["sh"],
        "",
        false,
    );
    registry.push_image("app", "latest", &v1);
    registry.push_image("app", "v1", &v1);
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(ImageManager::open(&config_in(dir.path())).await.unwrap());
    let latest = format!("{}/app:latest", registry.addr);
    let tag_v1 = format!("{}/app:v1", registry.addr);

    let mut tasks = Vec::new();
    for name in [&latest, &tag_v1, &latest, &tag_v1] {
        let (images, name) = (images.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            images.pull(&name, &Credentials::default()).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().id, v1.id);
    }
    let record_v1 = images.resolve(&v1.id).unwrap();
    assert_eq!(record_v1.repo_tags.len(), 2);

    // `latest` moves to v2; v1 keeps `v1`. The shared base layer is downloaded once and kept.
    registry.push_image("app", "latest", &v2);
    let record_v2 = images.pull(&latest, &Credentials::default()).await.unwrap();
    assert_eq!(record_v2.id, v2.id);
    assert_eq!(record_v2.chain_ids[0], record_v1.chain_ids[0]);
    assert_eq!(
        images.resolve(&v1.id).unwrap().repo_tags,
        vec![tag_v1.clone()]
    );
    assert_eq!(images.resolve(&latest).unwrap().id, v2.id);

    // Removing v1 by id keeps everything v2 uses.
    images.remove(&v1.id).await.unwrap();
    assert!(images.resolve(&tag_v1).is_err());
    assert!(
        images.content().contains(&v1.layers[0]),
        "shared layer removed"
    );
    assert!(
        !images.content().contains(&v1.layers[1]),
        "v1-only layer kept"
    );
    assert!(!images.content().contains(&v1.id));
    assert!(images.snapshotter().has_committed(&record_v2.chain_ids[0]));
    assert!(images.snapshotter().has_committed(&record_v2.chain_ids[1]));
    assert!(!images.snapshotter().has_committed(&record_v1.chain_ids[1]));
    images.remove(&v2.id[7..20]).await.unwrap();
    assert!(images.list().is_empty());
    assert!(images.content().list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_frees_what_an_interrupted_pull_left() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let images = ImageManager::open(&config).await.unwrap();

    // What a pull that died after fetching a layer and unpacking it leaves: a blob and a committed chain
    // that no image record names.
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    layer
        .append_data(&mut header, "orphan", b"bytes".as_slice())
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let digest = sha256(&layer);
    let mut writer = images
        .content()
        .writer(&digest, Some(layer.len() as u64))
        .unwrap();
    writer.write_all(&layer).unwrap();
    writer.commit().unwrap();
    let blob = images.content().blob_path(&digest).unwrap();
    let chain = images
        .snapshotter()
        .unpack_layer(None, &blob, snapshotter::Compression::None, &digest)
        .unwrap();
    assert!(images.snapshotter().has_committed(&chain));
    drop(images);

    let reopened = ImageManager::open(&config).await.unwrap();
    assert!(
        !reopened.content().contains(&digest),
        "orphan blob survived start-up"
    );
    assert!(
        !reopened.snapshotter().has_committed(&chain),
        "orphan layer survived start-up"
    );
}
