-- e-Planning (perencanaan): source tables read by mappings/e_planning.yaml.
-- Naming style: snake_case with kd_/nm_ prefixes, in the public schema.

CREATE TABLE public.ref_skpd (
    kd_skpd     varchar(30)  PRIMARY KEY,
    nm_skpd     varchar(255) NOT NULL,
    singkatan   varchar(50),
    alamat      text,
    is_aktif    boolean      DEFAULT true,
    tgl_update  timestamp    NOT NULL DEFAULT now()
);

CREATE TABLE public.ref_program (
    kd_program  varchar(30)  PRIMARY KEY,
    nm_program  varchar(500) NOT NULL,
    kd_skpd     varchar(30)  NOT NULL REFERENCES public.ref_skpd (kd_skpd),
    tgl_update  timestamp    NOT NULL DEFAULT now()
);

CREATE TABLE public.kegiatan (
    kode         varchar(30)  PRIMARY KEY,
    nama         varchar(500) NOT NULL,
    kd_program   varchar(30)  NOT NULL REFERENCES public.ref_program (kd_program),
    tahun        smallint     NOT NULL,
    tgl_mulai    date,
    tgl_selesai  date,
    status_code  smallint     NOT NULL DEFAULT 1,  -- 1 usulan, 2 disetujui, 3 ditolak
    catatan      text
);

CREATE TABLE public.sub_kegiatan (
    kd_sub_kegiatan  varchar(40)  PRIMARY KEY,
    kd_kegiatan      varchar(30)  NOT NULL REFERENCES public.kegiatan (kode),
    nm_sub_kegiatan  varchar(500) NOT NULL,
    indikator        text,
    target_kinerja   numeric(18,2),
    satuan           varchar(50)
);
