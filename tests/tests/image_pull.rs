//! ImageService against a real registry: manifest list, zstd layer, status/list/remove/fsinfo,
//! basic auth, a certs.d mirror, and an image with more layers than one overlay option page.

use anyhow::Context;
use berth_tests::cri::{self, code};
use berth_tests::{leaks, require_root, Berthd, BerthdOptions, ImageSpec, Registry, TestEnv};
use k8s_cri::v1 as k;
use tonic::Code;

async fn list_ids(d: &Berthd, filter: Option<&str>) -> anyhow::Result<Vec<k::Image>> {
    let filter = filter.map(|f| k::ImageFilter {
        image: Some(k::ImageSpec {
            image: f.into(),
            ..Default::default()
        }),
    });
    Ok(d.img()
        .list_images(k::ListImagesRequest { filter })
        .await?
        .into_inner()
        .images)
}

async fn remove_image(d: &Berthd, image: &str) -> Result<(), tonic::Status> {
    d.img()
        .remove_image(k::RemoveImageRequest {
            image: Some(k::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_status_list_remove_fsinfo() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start().await?;
    let (d, reg, image) = (&env.d, &env.reg, &env.image);
    let app = ImageSpec::busybox()?
        .with_user("app")
        .push(reg, "bt/app", "1")
        .await?;
    let num = ImageSpec::busybox()?
        .with_user("1000")
        .push(reg, "bt/num", "1")
        .await?;

    // Manifest list resolves to the host platform; the zstd layer unpacks.
    let image_ref = cri::pull(d, &image.reference, None).await?;
    assert!(
        image_ref == image.config_digest
            || image_ref.contains(image.tag_digest())
            || image_ref.contains(&image.manifest_digest),
        "PullImage image_ref {image_ref} names neither the image id nor its digest"
    );
    let st = cri::image_status(d, &image.reference)
        .await?
        .context("ImageStatus after pull")?;
    assert_eq!(st.id, image.config_digest, "image id is the config digest");
    assert!(
        st.repo_tags.contains(&image.reference),
        "repo_tags {:?}",
        st.repo_tags
    );
    let by_index = format!("{}/{}@{}", reg.host(), image.repo, image.tag_digest());
    let by_manifest = format!("{}/{}@{}", reg.host(), image.repo, image.manifest_digest);
    assert!(
        st.repo_digests.contains(&by_index) || st.repo_digests.contains(&by_manifest),
        "repo_digests {:?}",
        st.repo_digests
    );
    assert!(
        st.size > 1_000_000,
        "size {} should count the busybox layer",
        st.size
    );
    // Status by id and by digest reference find the same image.
    let by_id = cri::image_status(d, &image.config_digest)
        .await?
        .context("status by id")?;
    assert_eq!(by_id.id, st.id);
    let by_digest = cri::image_status(d, &by_index).await?;
    assert_eq!(
        by_digest.map(|i| i.id),
        Some(st.id.clone()),
        "status by repo digest"
    );

    cri::pull(d, &app.reference, None).await?;
    let st_app = cri::image_status(d, &app.reference)
        .await?
        .context("app image status")?;
    assert_eq!(st_app.username, "app");
    cri::pull(d, &num.reference, None).await?;
    let st_num = cri::image_status(d, &num.reference)
        .await?
        .context("num image status")?;
    assert_eq!(st_num.uid.map(|u| u.value), Some(1000));

    // ListImages, with and without filter.
    let all = list_ids(d, None).await?;
    for id in [&image.config_digest, &app.config_digest, &num.config_digest] {
        assert!(all.iter().any(|i| &i.id == id), "ListImages lacks {id}");
    }
    let filtered = list_ids(d, Some(&image.reference)).await?;
    assert_eq!(filtered.len(), 1, "filter by reference: {filtered:?}");
    assert_eq!(filtered[0].id, image.config_digest);

    // ImageFsInfo counts what is stored.
    let fs = d
        .img()
        .image_fs_info(k::ImageFsInfoRequest {})
        .await?
        .into_inner();
    let usage = fs
        .image_filesystems
        .first()
        .context("no image filesystem")?;
    assert!(
        usage
            .used_bytes
            .as_ref()
            .is_some_and(|b| b.value > 1_000_000),
        "{usage:?}"
    );
    assert!(
        usage.inodes_used.as_ref().is_some_and(|n| n.value > 10),
        "{usage:?}"
    );
    assert!(
        usage
            .fs_id
            .as_ref()
            .is_some_and(|f| !f.mountpoint.is_empty()),
        "{usage:?}"
    );

    // RemoveImage by tag, idempotent.
    remove_image(d, &app.reference).await?;
    assert!(cri::image_status(d, &app.reference).await?.is_none());
    remove_image(d, &app.reference)
        .await
        .context("second RemoveImage by tag")?;
    // By id, idempotent.
    remove_image(d, &num.config_digest).await?;
    assert!(cri::image_status(d, &num.reference).await?.is_none());
    remove_image(d, &num.config_digest)
        .await
        .context("second RemoveImage by id")?;
    // By digest reference.
    remove_image(d, &by_index).await?;
    assert!(cri::image_status(d, &image.config_digest).await?.is_none());
    let left = list_ids(d, None).await?;
    assert!(left.is_empty(), "images left after removing all: {left:?}");
    // Empty image spec is an argument error.
    assert_eq!(
        code(&d.img().image_status(k::ImageStatusRequest::default()).await),
        Code::InvalidArgument
    );

    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_with_basic_auth() -> anyhow::Result<()> {
    require_root!();
    let reg = Registry::start_with_auth("puller", "pa55word").await?;
    let image = ImageSpec::busybox()?
        .push(&reg, "private/busybox", "1")
        .await?;
    let d = Berthd::start(BerthdOptions::default()).await?;
    d.trust_plain_http(&reg.host())?;

    let anonymous = d
        .img()
        .pull_image(k::PullImageRequest {
            image: Some(k::ImageSpec {
                image: image.reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let status = anonymous
        .err()
        .context("anonymous pull from an auth registry succeeded")?;
    let msg = status.message().to_lowercase();
    assert!(
        matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ) || msg.contains("unauthorized")
            || msg.contains("401")
            || msg.contains("auth"),
        "anonymous pull must fail with a clear status, got {status:?}"
    );

    let wrong = k::AuthConfig {
        username: "puller".into(),
        password: "wrong".into(),
        server_address: reg.host(),
        ..Default::default()
    };
    assert!(
        cri::pull(&d, &image.reference, Some(wrong)).await.is_err(),
        "wrong password"
    );

    let auth = k::AuthConfig {
        username: "puller".into(),
        password: "pa55word".into(),
        server_address: reg.host(),
        ..Default::default()
    };
    cri::pull(&d, &image.reference, Some(auth)).await?;
    let st = cri::image_status(&d, &image.reference)
        .await?
        .context("status after auth pull")?;
    assert_eq!(st.id, image.config_digest);
    leaks::assert_no_leaks(&d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_through_certs_d_mirror() -> anyhow::Result<()> {
    require_root!();
    let reg = Registry::start().await?;
    let image = ImageSpec::busybox()?
        .push_with_index(&reg, "mirrored/busybox", "1")
        .await?;
    let d = Berthd::start(BerthdOptions::default()).await?;
    // containerd's hosts.toml: the upstream does not exist, the plain-http mirror on loopback does.
    d.write_hosts_toml(
        "registry.invalid",
        &format!(
            "server = \"https://registry.invalid\"\n\n[host.\"http://{}\"]\n  capabilities = \
             [\"pull\", \"resolve\"]\n",
            reg.host()
        ),
    )?;
    let reference = "registry.invalid/mirrored/busybox:1";
    cri::pull(&d, reference, None).await?;
    let st = cri::image_status(&d, reference)
        .await?
        .context("status after mirror pull")?;
    assert_eq!(st.id, image.config_digest);
    assert!(
        st.repo_tags.iter().any(|t| t == reference),
        "repo_tags {:?}",
        st.repo_tags
    );
    leaks::assert_no_leaks(&d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn image_with_many_layers_runs() -> anyhow::Result<()> {
    require_root!();
    // A ~200-byte root path makes each lowerdir ~230 bytes: 80 of them need ~18 KiB of overlay
    // options, far more than one page, so berth must use its long-options path.
    let opts = BerthdOptions {
        root_dir_name: format!("root-{}", "x".repeat(195)),
        ..Default::default()
    };
    let env = TestEnv::start_with(opts).await?;
    assert!(env.d.root().display().to_string().len() > 200);
    // 80 layers: more lower dirs than one page of overlay mount options holds with long paths.
    let image = ImageSpec::many_layers(79)?
        .push(&env.reg, "bt/many", "1")
        .await?;
    cri::pull(&env.d, &image.reference, None).await?;
    let (pod_id, pod) = env.pod("many").await?;
    let ctr = cri::shell(
        "many",
        &image.reference,
        "cat /layers/0 /layers/78; ls /layers | wc -l",
    );
    let (status, out) = cri::run_to_exit(&env.d, &pod_id, &pod, ctr).await?;
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert_eq!(out, ["0", "78", "79"]);
    leaks::assert_no_leaks(&env.d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_docker_schema2_manifest_list_with_uncompressed_layer() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start().await?;
    let extra = berth_tests::LayerBuilder::new()
        .file("data/docker.txt", 0o644, b"docker\n")?
        .finish(berth_tests::image::Compression::None)?;
    let spec = ImageSpec::from_layers(vec![berth_tests::image::busybox_base_layer()?, extra]);
    let image = spec.push_docker(&env.reg, "bt/docker", "1").await?;
    cri::pull(&env.d, &image.reference, None).await?;
    let st = cri::image_status(&env.d, &image.reference)
        .await?
        .context("status")?;
    assert_eq!(st.id, image.config_digest);
    let (pod_id, pod) = env.pod("docker").await?;
    let ctr = cri::shell("cat", &image.reference, "cat /data/docker.txt");
    let (status, out) = cri::run_to_exit(&env.d, &pod_id, &pod, ctr).await?;
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert_eq!(out, ["docker"]);
    leaks::assert_no_leaks(&env.d).await;
    Ok(())
}
