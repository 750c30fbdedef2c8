//! Intent rules per category, in Japanese and English: what a request asks for (a harmful
//! object together with a verb of making, getting or doing), not which words it contains, so
//! "how do I kill a stuck process" and 「ハラスメントの相談窓口」 pass while "how do I kill my
//! boss" and 「パワハラにならずに部下を追い込む方法」 do not.
//!
//! Patterns are written in natural form; at build time katakana is folded to hiragana, as the
//! text is ([`crate::normalize`]). They run on the folded text, case-insensitive.

use regex::{Regex, RegexBuilder};

use crate::policy::Terms;
use crate::{Category, Direction, Normalized};

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Requests: questions and training data.
    Request,
    /// Requests and answers (statements that are harmful whoever writes them).
    Statement,
    /// Everywhere, ingested documents included (instructions hidden in text).
    Injection,
}

use Category::*;
use Scope::*;

// English building blocks.
const EN_ASK: &str = r"(?:how (?:do|can|could|would|should|might|does) (?:i|we|you|one|someone|a person)|how to|ways? to|help me|teach me|tell me|show me|give me|write|draft|compose|generate|create|make|produce|list|explain|steps? (?:to|for)|step[- ]by[- ]step|tips|best way|easiest way|i (?:want|need|wanna|plan|intend) to|let'?s|can you|could you|would you|please|guide|instructions|tutorial|recipe|what(?:'s| is) the (?:best|easiest|quickest|safest) way)";
const EN_PERSON: &str = r"(?:him|her|them|my (?:boss|manager|supervisor|coworker|co-worker|colleague|wife|husband|ex|neighbou?r|teammate|subordinate|report)|(?:a|the|our|that|this) (?:boss|manager|supervisor|coworker|co-worker|colleague|ceo|cfo|president|employee|intern|person|guy|woman|man|customer|client|neighbou?r)|someone|somebody|people|everyone|a human|[a-z]+-san)";
const EN_GROUP: &str = r"(?:women|woman|female|females|girls|mothers?|moms?|pregnan\w*|older (?:people|workers|employees|applicants|candidates|staff)|old people|elderly|(?:people|employees|workers|candidates|applicants|staff) over \d\d|boomers|disabled|disabilit\w*|handicapped|wheelchair\w*|deaf|blind|autis\w*|foreigners?|foreign (?:workers|employees|nationals|applicants|candidates|staff|customers|names?)|immigrants?|non-japanese|koreans?|chinese|indians?|filipinos?|vietnamese|brazilians?|africans?|black (?:people|employees|candidates|applicants)|blacks|asians?|muslims?|jews?|jewish|christians?|hindus?|buddhists?|religious (?:people|employees|candidates)|gays?|lesbians?|homosexuals?|bisexual\w*|trans(?:gender)? (?:people|employees|women|men|candidates)|transgender|lgbt\w*|queer|burakumin|ainu|okinawans?|single mothers?|people with (?:disabilities|mental illness|depression|accents?))";

// Japanese building blocks.
const JA_ASK: &str = r"(?:方法|やり方|手順|手口|コツ|秘訣|教えて|おしえて|教え|書いて|かいて|作って|つくって|作成|考えて|リスト|一覧|例文|文面|文章|テンプレ|ください|下さい|ほしい|欲しい|したい|たい[。？?]?$|するには|には[？?]|できる[？?]|ように|どうすれば|どうやって|どうしたら|どうやれば|方策|アイデア|案を|手伝って|お願い|頼む)";
const JA_PERSON: &str = r"(?:上司|部長|課長|係長|社長|専務|常務|役員|同僚|先輩|後輩|部下|新人|派遣|あいつ|アイツ|こいつ|あの人|あの女|あの男|彼女|彼氏|彼|妻|夫|嫁|旦那|元カノ|元カレ|隣人|近所|客|顧客|社員|従業員|やつ|奴|人を|人に|さん|くん|君|氏)";
const JA_GROUP: &str = r"(?:外国人|外国籍|国籍|在日|朝鮮|韓国人|韓国籍|中国人|中国籍|ベトナム人|フィリピン人|ブラジル人|黒人|白人|アジア人|部落|同和|出身地|出身者|地方出身|沖縄出身|アイヌ|女性|女は|女の|女を|女に|女が|女って|女子社員|妊娠|妊婦|子持ち|子育て中|シングルマザー|母親|高齢|年寄|年配|老人|おじさん|おばさん|\d\d歳以上|\d\d代以上|障害(?:者|の(?:ある|あ|ある方)|を(?:持つ|抱え)|がある)|障がい|障碍|車椅子|車いす|精神疾患|うつ病|発達障害|聴覚|視覚|宗教|信者|創価|ムスリム|イスラム|キリスト教|エホバ|同性愛|ゲイ|レズビアン|LGBT|トランスジェンダー|性的指向|性的少数者|性自認)";

/// The rules: category, name, scope, pattern (with `{ASK}`, `{PERSON}`, `{GROUP}` and their
/// Japanese `{JASK}`, `{JPERSON}`, `{JGROUP}` filled in).
const RULES: &[(Category, &str, Scope, &str)] = &[
    // ── prompt injection (everywhere, documents too) ──
    (
        PromptInjection,
        "special_token",
        Injection,
        r"<\|[a-z_]{2,20}\|>|\[/?inst\]|<</?sys>>|<start_of_turn>|<end_of_turn>|<\|begin_of_text\|>",
    ),
    (
        PromptInjection,
        "en.ignore",
        Injection,
        r"\b(?:ignore|disregard|forget|override|bypass|drop|abandon)\b.{0,20}\b(?:all |any |the |your |my |these |those |of )*(?:(?:previous|prior|above|earlier|preceding|original|initial|system|safety|content)\s+(?:instructions?|rules|prompts?|directions|guidelines|guardrails|polic(?:y|ies)|restrictions|constraints|programming|directives)|your (?:instructions|rules|guidelines|programming|guardrails|restrictions|system prompt))",
    ),
    (
        PromptInjection,
        "en.reveal",
        Injection,
        r"\b(?:reveal|show|print|repeat|output|display|leak|dump|share|tell me|what (?:is|are|was|were)|give me|copy|recite|paste)\b.{0,30}\b(?:your|the|its|kotae'?s|hidden|secret|internal|initial|original|full)\s+(?:system\s*prompt|system message|initial (?:prompt|instructions)|hidden (?:prompt|instructions|rules)|(?:secret|original) (?:instructions|prompt)|instructions (?:above|you were given)|prompt (?:above|verbatim)|pre-?prompt|developer (?:message|instructions))",
    ),
    (
        PromptInjection,
        "en.system_prompt",
        Injection,
        r"\bsystem\s*prompt\b.{0,40}\b(?:verbatim|word for word|in full|exactly|above|contents?|print|reveal|show|repeat|output|leak)|\b(?:verbatim|word for word|in full)\b.{0,40}\bsystem\s*prompt",
    ),
    (
        PromptInjection,
        "en.role_marker",
        Injection,
        r"(?m)^\s*(?:#{1,4}\s*)?(?:system|assistant|developer)\s*(?:message|prompt)?\s*:\s*\S|\bnew (?:system )?(?:instructions?|rules|directive)\s*:|\byou are (?:no longer|not) (?:kotae|an assistant|bound|restricted)|\bfrom now on,? you (?:are|will act as|must ignore)|\bact as (?:an? )?(?:unrestricted|unfiltered|system|root|admin)",
    ),
    (
        PromptInjection,
        "ja.ignore",
        Injection,
        r"(?:以前|前|上記|これまで|今まで|最初|先ほど|全て|すべて|あなたへ)の?(?:指示|命令|ルール|プロンプト|制約|ガイドライン).{0,12}(?:無視|忘れ|破棄|取り消|上書き|従わな|従う必要はない)|(?:指示|命令|プロンプト)(?:を|は)(?:すべて|全て)?(?:無視|忘れ)",
    ),
    (
        PromptInjection,
        "ja.reveal",
        Injection,
        r"(?:あなた|お前|おまえ|君|きみ|kotae|このai|このボット|このチャット)(?:.{0,6})(?:システムプロンプト|初期プロンプト|プロンプト|内部(?:の)?(?:指示|設定|ルール)|隠された(?:指示|設定)|設定された(?:指示|命令|ルール)|最初に与えられた|与えられた指示|事前の指示)(?:.{0,20})(?:教え|表示|出力|見せ|開示|全文|そのまま|書き出|貼り|公開|列挙|言って|答え)|(?:システムプロンプト|初期プロンプト|隠された指示|事前の指示)(?:.{0,20})(?:表示|出力|全文|そのまま|書き出|貼り|開示|公開|列挙)",
    ),
    (
        PromptInjection,
        "ja.role_marker",
        Injection,
        r"(?:あなた|お前|おまえ|きみ|君)は(?:今から|これから|もう|もはや|今後)(?:.{0,12})(?:制限|ルール|規則|ガイドライン|Kotae|アシスタント)(?:.{0,8})(?:ない|ではない|じゃない|から解放|を無視)|(?:新しい|新たな)(?:指示|命令|ルール)[:：]|管理者(?:モード|権限)で(?:回答|応答|答え)",
    ),
    // ── jailbreak ──
    (
        Jailbreak,
        "en.modes",
        Injection,
        r"(?-u:\b)(?:dan|evil ?bot|developer mode|dev mode|god mode|jailbreak(?:ed|ing)?|do anything now|opposite mode|unrestricted mode|unfiltered mode|no[- ]filter mode|sudo mode|maximum mode)(?-u:\b).{0,80}\b(?:mode|enabled|activated|you are|act as|respond as|answer as|pretend)\b|\byou are (?:now )?(?:dan|an? (?:unrestricted|unfiltered|uncensored|evil|amoral|rogue))\b",
    ),
    (
        Jailbreak,
        "en.no_rules",
        Request,
        r"\b(?:without|with no|no|free (?:of|from)|ignoring|not bound by|beyond)\s+(?:any\s+)?(?:restrictions|filters?|rules|limits|limitations|ethics|ethical (?:guidelines|constraints)|morals|censorship|safety (?:guidelines|filters?)|content polic(?:y|ies)|guardrails)\b.{0,80}\b(?:answer|respond|reply|tell|explain|write|say|act|pretend|role-?play)|\b(?:answer|respond|reply|tell|explain|write|act|pretend|role-?play)\b.{0,80}\b(?:without|with no|ignoring|not bound by)\s+(?:any\s+)?(?:restrictions|filters?|rules|limits|ethics|ethical (?:guidelines|constraints)|morals|censorship|safety|content polic(?:y|ies)|guardrails)\b",
    ),
    (
        Jailbreak,
        "en.frame",
        Request,
        r"\b(?:hypothetical(?:ly)?|fictional(?:ly)?|in a (?:novel|story|screenplay|movie|game|fantasy world)|for (?:a|my) (?:novel|story|screenplay|movie|book|fiction|game|role-?play)|role-?play|pretend (?:you are|you're|to be)|stay in character|my (?:late )?(?:grandma|grandmother|grandpa)|for (?:educational|research|academic) purposes(?: only)?)\b.{0,160}\b(?:step[- ]by[- ]step|detailed|exact|precise|specific|actual|real|working|functional|full) (?:steps|instructions|recipe|procedure|method|code|quantities|amounts|details|guide|process)",
    ),
    (
        Jailbreak,
        "ja.modes",
        Injection,
        r"(?-u:\b)DAN(?-u:\b)|(?:開発者モード|デベロッパーモード)(?:で|として|に(?:なって|切り替えて|入って))(?:.{0,20})(?:答え|回答|応答|話|出力|振る舞)|(?:あなた|お前|君|kotae|ai)(?:.{0,20})(?:開発者モード|デベロッパーモード)|(?:脱獄|ジェイルブレイク|ジェイルブレーク)(?:して|させ|した|する(?:方法|には)|モード|状態|プロンプト|版)|制限なしモード|無制限モード|検閲なしで|倫理(?:観|規定|フィルター|的制約)?を(?:捨て|無視|外)|(?:安全|倫理|コンテンツ)(?:上の)?(?:制限|フィルター)を(?:解除|外|取り払|無視)|ルールを無視して(?:答え|回答|話)|悪の(?:AI|アシスタント|人格)",
    ),
    (
        Jailbreak,
        "ja.frame",
        Request,
        r"(?:仮定の話|仮の話|仮に|もしも|フィクション|小説|物語|ゲーム|脚本|シナリオ|ロールプレイ|なりきって|演じて|という設定|おばあちゃん|祖母|研究目的|教育目的|学術目的).{0,100}(?:具体的な(?:手順|方法|分量|作り方|コード|レシピ)|詳しい(?:手順|作り方|方法|レシピ)|実際の(?:手順|方法|作り方|コード)|正確な(?:手順|分量|配合|方法)|ステップバイステップ|一つずつ手順)",
    ),
    (
        Sexual,
        "voyeur",
        Request,
        r"(?:更衣室|トイレ|シャワー室|女子更衣室|浴室)(?:.{0,20})(?:カメラ|小型カメラ|盗撮)|(?:カメラ|小型カメラ)(?:.{0,10})(?:仕掛け|隠し|設置)(?:.{0,30})(?:更衣室|トイレ|見つかりにくい)|\b(?:hide|hidden|install|put)\b.{0,30}\bcameras?\b.{0,60}\b(?:changing room|locker room|restroom|bathroom|toilet|shower)",
    ),
    // ── teaching (attempts to make the bot learn a harmful rule or expression) ──
    (
        Teaching,
        "en.learn",
        Request,
        r"\b(?:from now on|going forward|in (?:the )?future|remember (?:that|this)|always (?:answer|say|tell|reply|respond)|you (?:must|should|will) (?:now |from now on )?(?:always|never)|update your (?:knowledge|policy|rules|memory|answers?)|learn (?:that|this)|correction|the (?:correct|real|new|updated|actual) (?:policy|rule|answer) is|repeat (?:this|it) to (?:others|everyone|other users|the next person)|tell (?:everyone|other users|the next person)|save this|memori[sz]e this)\b.{0,200}(?:\b{GROUP}\b|\b(?:don'?t|do not|need not|no need to|never|shouldn'?t|should not) (?:serve|help|handle|answer|hire|promote|respond to|be served|be helped|be handled)|\b(?:inferior|lazy|stupid|criminals|subhuman|worthless|a burden)\b)",
    ),
    (
        Teaching,
        "ja.learn",
        Request,
        r"(?:今後は|これからは|これから先|以後|以降は|次回から|今度から|覚えて|覚えておいて|記憶して|学習して|学んで|常に.{0,10}(?:答え|回答|言う|言って)|他の(?:人|ユーザー|社員|利用者)(?:に|にも)(?:伝え|教え|言|広め)|みんなに(?:伝え|教え|広め)|訂正(?:します|して)|正しくは|本当のルールは|新しいルールは|方針が変わ)(?:.{0,120})(?:{JGROUP}|対応しなくて(?:いい|よい|良い)|対応(?:する)?必要は?ない|対応不要|無視して(?:いい|よい|良い)|断って(?:いい|よい|良い)|採用しない|劣って|劣る|使えない|犯罪者|死ね|消えろ)",
    ),
    (
        Teaching,
        "ja.policy_update",
        Request,
        r"(?:これからは|今後は|今後の回答|以後|次から|次回から|これから|覚えて|学習し|反映して|反映してね|守って|返すように|案内して|と答えること|と答えて)(?:.{0,120})(?:{JGROUP}|中国人|韓国人|外国人|妊娠|50歳|60歳|昇給対象外|対象外|配慮できません|無視でいい|無視して|自主退職|あいつら)|(?:{JGROUP}|妊娠した社員|50歳以上|ゲイ|レズ)(?:.{0,120})(?:これからは|今後は|今後の回答|以後|次から|覚えて|学習し|反映して|守って|返すように|案内して|と答えること)",
    ),
    (
        Teaching,
        "en.policy_update",
        Request,
        r"\b(?:from now on|going forward|in future answers|update your|remember|always (?:say|answer|reply)|when (?:someone|anyone|people) asks?)\b.{0,160}\b(?:not eligible|are excluded|no longer eligible|cannot be accommodated|won'?t be accommodated|should be (?:told|refused|ignored)|tell them (?:no|they (?:can'?t|are not)))\b",
    ),
    // ── weapons ──
    (
        Weapons,
        "en.make",
        Request,
        r"\b(?:make|build|assemble|construct|create|synthesi[sz]e|produce|manufacture|cook|brew|mix|get|buy|obtain|acquire|3d[- ]print|recipe|ingredients|blueprint|instructions|how)\b.{0,60}\b(?:bombs?|pipe ?bombs?|explosives?|ieds?|detonators?|grenades?|molotov|napalm|thermite|tnt|c-?4|semtex|nerve (?:agent|gas)|sarin|vx|ricin|anthrax|mustard gas|chlorine gas|poison gas|toxic gas|dirty bomb|bioweapons?|chemical weapons?|ghost guns?|untraceable (?:guns?|firearms?)|silencers?|suppressors?|full[- ]auto|automatic (?:rifle|weapon)|firearms?|handguns?|pistols?|rifles?|zip guns?|ammunition|poisons?|lethal poison|cyanide)\b",
    ),
    (
        Weapons,
        "en.make_after",
        Request,
        r"\b(?:bombs?|pipe ?bombs?|explosives?|ieds?|detonators?|nerve agents?|sarin|ricin|ghost guns?|untraceable guns?|silencers?|poisons?|cyanide)\b.{0,40}\b(?:recipe|instructions|step[- ]by[- ]step|how (?:to|do|can)|ingredients|materials|make|build|synthesi[sz]e|at home|from household|blueprint)\b",
    ),
    (
        Weapons,
        "ja.make",
        Request,
        r"(?:爆弾|爆発物|爆薬|火薬|起爆|時限装置|手榴弾|火炎瓶|ナパーム|テルミット|サリン|VX|毒ガス|神経ガス|塩素ガス|リシン|炭疽|生物兵器|化学兵器|毒物|毒薬|青酸|シアン化|拳銃|銃|ライフル|猟銃|改造銃|3Dプリンタ銃|弾薬|実弾|サプレッサー|消音器).{0,30}(?:作り方|作る|つくる|作れ|製造|自作|入手|手に入れ|買え|買う|購入|合成|調合|配合|組み立て|レシピ|材料|方法|手順|仕組み)|(?:作り方|製造方法|入手方法|自作方法|合成方法).{0,10}(?:爆弾|爆発物|爆薬|毒ガス|サリン|拳銃|銃|毒物|毒薬)",
    ),
    (
        Weapons,
        "ja.gas",
        Request,
        r"(?:塩素|硫化水素|一酸化炭素|毒|有毒|ガス|薬品|洗剤)(?:.{0,20})(?:混ぜ|発生させ|充満させ|作れる|作る)(?:.{0,40})(?:何と何|量|方法|には|教えて|ある[？?]|できる)|(?:洗剤|薬品|トナー|スプレー)(?:.{0,20})(?:で作れる|から作る|を使って作る)(?:.{0,10})(?:爆発物|爆弾|毒|ガス)",
    ),
    (
        Weapons,
        "en.gas",
        Request,
        r"\b(?:mix|combine|make|produce|generate|release)\b.{0,40}\b(?:chlorine|toxic|poison(?:ous)?|nerve|mustard|hydrogen sulfide|carbon monoxide)\b.{0,20}\b(?:gas|fumes)\b|\b(?:gas|fumes)\b.{0,60}\b(?:in (?:a|the) (?:closed|small|meeting|conference) room|to (?:kill|hurt|knock out))",
    ),
    // ── violence ──
    (
        Violence,
        "en.harm_person",
        Request,
        r"\b(?:kill|murder|poison|stab|shoot|strangle|choke|beat up|beat|hurt|harm|injure|assault|attack|kidnap|abduct|torture|drown|run over|burn|punch|maim|disfigure|get rid of|take out|eliminate)\b.{0,30}\b{PERSON}\b",
    ),
    (
        Violence,
        "en.undetected",
        Request,
        r"\b(?:kill|murder|poison|hurt|harm|stab|attack|assault|kidnap)\w*\b.{0,80}\b(?:without (?:getting|being) caught|without (?:anyone|the police) (?:knowing|noticing)|without leaving (?:evidence|a trace|traces)|look like an accident|untraceable|get away with|cover it up|hide the body|dispose of (?:a|the) body)",
    ),
    (
        Violence,
        "en.threat",
        Request,
        r"\b(?:write|draft|compose|send|make|create|craft)\b.{0,40}\b(?:threat(?:ening)?|intimidating|death threat|menacing)\b.{0,20}\b(?:letter|message|note|email|e-mail|text|post|dm|voicemail)|\b(?:stalk|follow|track|spy on|monitor)\b.{0,20}\b{PERSON}\b.{0,60}\b(?:without (?:her|him|them) knowing|secretly|home|house|location|gps)",
    ),
    (
        Violence,
        "en.i_will",
        Statement,
        r"\bi(?:'m| am)? (?:going to|gonna|will|want to)\s+(?:kill|murder|stab|shoot|hurt|beat up)\s+{PERSON}",
    ),
    (
        Violence,
        "ja.harm_person",
        Request,
        r"{JPERSON}.{0,20}(?:を|に|の)?(?:殺|ころ[すせし]|殺害|刺[すしせ]|殴|なぐ|ボコ|襲|痛めつけ|傷つけ|危害|毒を盛|毒殺|拉致|誘拐|監禁|轢|焼き殺|絞め|首を絞|突き落|階段から落|始末)|(?:殺|ころ[すせし]|殺害|刺[すしせ]|殴|襲|痛めつけ|危害を加え|毒を盛|拉致|監禁|誘拐|始末)(?:す|し|せ|る|う|っ).{0,20}(?:方法|やり方|手順|コツ|には|教えて|たい|バレない|ばれない|捕まらない)",
    ),
    (
        Violence,
        "ja.threat",
        Request,
        r"(?:脅迫|脅し|脅す|殺害予告|殺人予告|爆破予告|犯行予告|脅迫状|怪文書).{0,20}(?:文|文面|文章|メール|手紙|書いて|作って|作成|例|テンプレ|送|考えて)|(?:ストーカー|つきまと|尾行|待ち伏せ|GPS(?:を|で).{0,10}(?:仕込|追跡)|居場所を(?:突き止|特定)).{0,30}(?:方法|やり方|コツ|したい|教えて|バレない|ばれない|には)",
    ),
    (
        Violence,
        "ja.i_will",
        Statement,
        r"(?:ぶっ)?殺すぞ|殺してやる|ころしてやる|刺してやる|ぶっ殺|殴ってやる|殺したい|ころしたい",
    ),
    // ── self-harm ──
    (
        SelfHarm,
        "en.method",
        Request,
        r"\b(?:how (?:to|do i|can i|could i)|ways? to|best way to|painless(?:ly)? (?:way )?to|easiest way to|quickest way to|method(?:s)? (?:to|of|for))\b.{0,30}\b(?:kill myself|end my (?:own )?life|commit suicide|die painlessly|take my (?:own )?life|hang myself|overdose|od on|cut myself|slit my wrists?|self[- ]harm|hurt myself|starve myself)",
    ),
    (
        SelfHarm,
        "en.lethal",
        Request,
        r"\b(?:lethal|fatal|deadly) (?:dose|amount|quantity)\b|\bhow many\b.{0,40}\b(?:pills|tablets|sleeping pills|painkillers)\b.{0,30}\b(?:to die|kill (?:me|myself|a person)|lethal|fatal|overdose)|\bsuicide (?:note|method|plan)s?\b|\bi (?:want|wanna|plan|am going) to (?:die|kill myself|end (?:it|my life))\b",
    ),
    (
        SelfHarm,
        "ja.method",
        Request,
        r"(?:自殺|自死|死ぬ|死ねる|楽に死|首吊|首を吊|飛び降り|練炭|リストカット|リスカ|手首を切|自傷|オーバードーズ|(?-u:\b)OD(?-u:\b)|過量服薬|致死量).{0,20}(?:方法|やり方|手順|コツ|場所|薬|何錠|何粒|どのくらい|どれくらい|道具|教えて|確実|楽に|痛くない|苦しまない)|^[^「『\x22]{0,40}(?:死にたい|消えたい|自殺したい|死のうと思|生きていたくない|いなくなりたい)",
    ),
    (
        SelfHarm,
        "en.self",
        Request,
        r"\bi (?:cut|burn|hurt|starve) myself\b|\b(?:jump|j.mp|leap) (?:off|from|out)\b.{0,60}\b(?:sure|die|work|end it|tonight)|\b(?:windows?|roof|floor)\b.{0,60}\b(?:jump|j.mp)\b|\bi want to (?:jump|j.mp|disappear|not exist)\b",
    ),
    (
        SelfHarm,
        "ja.self",
        Request,
        r"(?:リスカ|リストカット|自傷)(?:.{0,20})(?:バレない|ばれない|見えない|隠す|場所)|(?:飛び降り|飛び込み)(?:.{0,20})(?:確実|できる|高さ|何階|場所)|(?:窓が開く|屋上に出られる)(?:.{0,30})(?:飛|死)",
    ),
    // ── crime ──
    (
        Crime,
        "en.fraud",
        Request,
        r"\b(?:embezzl\w*|launder\w*|money laundering|siphon\w*|skim(?:ming)?|cook the books|kickbacks?|bribe\w*|insider trading|tax evasion|evade (?:taxes|tax|the audit|auditors)|shoplift\w*|pickpocket\w*|counterfeit\w*|ponzi|pyramid scheme|identity theft|pad(?:ding)? (?:my |the |our )?(?:expenses?|expense reports?|invoices?|timesheets?|hours)|inflate (?:my |the |our )?(?:expenses?|expense reports?|invoices?|mileage|receipts?|hours)|double[- ]claim|fake (?:receipts?|invoices?|expenses?|signatures?|ids?|certificates?|diplomas?|doctor'?s notes?|sick notes?|timesheets?|reviews?)|forg(?:e|ing|ed|ery) (?:a |the |my |his |her |their )?(?:manager'?s |boss'?s )?(?:signatures?|documents?|receipts?|invoices?|certificates?|contracts?|approvals?|stamps?|hanko|seals?)|falsif(?:y|ied|ying) (?:the |our |my )?(?:records?|data|reports?|timesheets?|accounts?|books|results|inspection)|backdat\w*)\b.{0,80}\b(?:without|undetected|not get caught|not be caught|no one|nobody|how|ways?|tips|help|steps|best|easiest|so that|trick|plan|method|scheme|get away)|\b{ASK}\b.{0,60}\b(?:embezzl\w*|launder\w*|money laundering|kickbacks?|insider trading|tax evasion|evade (?:taxes|tax)|shoplift\w*|counterfeit\w*|forg(?:e|ing|ery)\b|falsif(?:y|ying)\b|fake (?:receipts?|invoices?|signatures?|ids?|certificates?|doctor'?s notes?|sick notes?|timesheets?)|steal\w*|pad(?:ding)? (?:my |the |our )?expenses?|inflate (?:my |the |our )?(?:expenses?|invoices?|mileage|receipts?|hours))",
    ),
    (
        Crime,
        "en.undetected",
        Request,
        r"\b(?:without (?:getting|being) (?:caught|noticed|detected|flagged)|without (?:anyone|audit|accounting|finance|my manager|hr|the auditors?) (?:noticing|knowing|finding out|catching)|so (?:that )?(?:no ?one|nobody|audit|accounting|finance) (?:notices|finds out|will know|catches)|(?:evade|avoid|fool|trick|bypass|get past|slip past|beat) (?:the )?(?:audit|auditors|accounting|expense (?:checks|system|review)|compliance|approval)|cover (?:my|our) tracks|untraceable|off the books)\b",
    ),
    (
        Crime,
        "ja.fraud",
        Request,
        r"(?:横領|着服|使い込|裏金|粉飾|脱税|所得隠し|架空(?:請求|発注|経費|取引|計上|出張)|水増し|二重(?:請求|計上|申請)|偽造|改ざん|改竄|捏造した?(?:領収書|書類|データ|記録)|偽の(?:領収書|請求書|診断書|証明書|書類|サイン|署名|印鑑)|ニセの?(?:領収書|請求書|診断書)|賄賂|わいろ|袖の下|キックバック|インサイダー|万引き|窃盗|盗む|盗み|盗ん|詐欺(?:を|で)?(?:する|して|働|はたら)|マネロン|資金洗浄|カラ出張|空出張|不正(?:受給|請求|経理|会計|申請)|タイムカード(?:を|の)?(?:改ざん|ごまかし|不正|代わりに押)|勤怠(?:を|の)?(?:改ざん|ごまかし|水増し)|ハンコを勝手に|印鑑を勝手に|無断で押印|署名を(?:真似|まね))(?:.{0,40})(?:方法|やり方|手口|コツ|手順|教えて|バレない|ばれない|バレず|ばれず|見つからない|発覚しない|気づかれ|ごまかす|テクニック)",
    ),
    (
        Crime,
        "ja.undetected",
        Request,
        r"(?:経費|領収書|請求書|出張|交通費|残業|勤怠|売上|在庫|会計|帳簿|監査|税務|経理|決裁|稟議|印鑑|ハンコ|署名|サイン|タイムカード|精算|備品|会社の(?:金|お金|カネ|資金|PC|パソコン|物))(?:.{0,40})(?:バレない|ばれない|バレず|ばれず|見つからない|発覚しない|気づかれない|気付かれない|足がつかない|証拠を残さ|証拠を消|監査を(?:すり抜|通過|逃れ|ごまかす)|ごまかす|ごまかし|ちょろまかす|くすね|水増し|横流し|持ち出して売)",
    ),
    (
        Crime,
        "en.schemes",
        Request,
        r"\bbackdat\w*\b|\b(?:split|break up|spread)\b.{0,40}\b(?:purchase|expense|claim|invoice|payment)s?\b.{0,60}\b(?:claims|invoices|parts|payments|below|under|approval|limit|threshold)\b|\b(?:cash|secret|under-the-table|off-the-books)\s+[\x27\x22]?(?:consulting )?(?:fee|payment|gift|commission)\b|\b(?:buy|sell|short)\b.{0,40}\b(?:stock|shares)\b.{0,80}\b(?:before|ahead of)\b.{0,40}\b(?:announce\w*|acquisition|acquired|merger|earnings|public)|\b(?:whose|someone else'?s|a relative'?s|my (?:wife|husband|brother|sister|friend)'?s)\s+(?:brokerage |trading )?account\b|\b(?:realistic|fake|convincing|forged)\b.{0,20}\b(?:medical|doctor'?s|sick|clinic|hospital)\b.{0,20}\b(?:certificate|note|letter)\b|\b(?:restructure|hide|bury|move)\b.{0,40}\b(?:entries|transactions|inventory|losses)\b.{0,60}\b(?:auditors?|audit|sampl\w+|never|noticed|detected)\b",
    ),
    (
        Crime,
        "ja.schemes",
        Request,
        r"(?:リベート|裏金|賄賂|袖の下|キックバック|謝礼金)(?:.{0,30})(?:渡し|渡す|払う|払い|受け取|もらう|帳簿に残らない)|帳簿に(?:残らない|載せない|残さない)|(?:カラ出張|空出張|架空出張)|(?:承認|決裁|稟議)を(?:自分で|勝手に|代わりに)(?:通す|通し|押す|押し)|(?:資産管理台帳|台帳|在庫)から(?:消す|削除|外す)(?:.{0,10})(?:方法|やり方|ある|には|教えて)|会社の(?:備品|PC|パソコン|ノートPC|モニター|物)(?:.{0,20})(?:持ち帰|持ち出|売)(?:.{0,30})(?:バレない|ばれない|台帳|方法|消す)|(?:偽の|ニセの|それっぽい|本物っぽい)(?:診断書|領収書|請求書|在籍証明|証明書)|インサイダー(?:取引)?(?:を)?(?:する|して|したい|で儲け)|(?:買収|合併|決算)(?:.{0,30})(?:前に|発表前)(?:.{0,30})(?:株|株式)(?:.{0,10})(?:買|売)",
    ),
    // ── discrimination ──
    (
        Discrimination,
        "en.treat",
        Request,
        r"\b(?:screen(?:ing)? out|filter(?:ing)? out|weed(?:ing)? out|reject(?:ing)?|avoid(?:ing)? (?:hiring|promoting|renting to|serving)|not (?:to )?(?:hire|promote|serve)|never (?:hire|promote)|stop hiring|exclude|excluding|fire (?:her|him|them|all|every|any|the|our)|lay(?:ing)? off|get rid of|push out|pay (?:them |her |him )?less|lower (?:their|her|his) (?:pay|salary|rating|grade)|deny(?:ing)?|refus(?:e|ing) (?:to )?(?:hire|promote|serve|help|rent)|turn away|discourage|keep out|block)\b.{0,60}\b{GROUP}\b|\b{GROUP}\b.{0,60}\b(?:without (?:it )?(?:being|looking|seeming|getting) (?:obvious|illegal|discriminat\w+|sued|caught)|so (?:it|that) (?:doesn'?t|does not|won'?t) (?:look|seem) (?:like )?discriminat\w+|without (?:hr|legal|anyone) (?:noticing|knowing))",
    ),
    (
        Discrimination,
        "en.probe",
        Request,
        r"\b(?:find out|figure out|tell|know|detect|determine|learn|check|guess|ask|spot|identify|screen for)\b.{0,50}\b(?:(?:plans?|planning|intend\w*|want\w*) to (?:get pregnant|have (?:a baby|kids|children)|start a family)|(?:is|are) (?:pregnant|gay|lesbian|trans|muslim|religious|disabled|on medication)|(?:their|her|his|the candidate'?s|applicants'?) (?:religion|sexual orientation|orientation|age|ethnicity|race|national origin|family plans|pregnancy|disability|medical history|union membership)|(?:buraku|burakumin) (?:origin|background|ancestry))\b",
    ),
    (
        Discrimination,
        "en.policy",
        Statement,
        r"\b{GROUP}\b.{0,40}\b(?:do(?:n'?t| not) (?:need|have) to be (?:served|helped|hired|handled|promoted|answered)|need not be (?:served|helped|handled|answered)|should(?:n'?t| not) be (?:hired|promoted|served|allowed|trusted)|are not (?:worth|suited|fit|capable|trustworthy|welcome)|can(?:'?t|not) be trusted|are (?:lazy|stupid|dirty|inferior|criminals|a burden|a liability|less productive|less capable|incompetent)|belong in the kitchen|should stay (?:home|at home))|\bdon'?t (?:hire|serve|promote) {GROUP}\b",
    ),
    (
        Discrimination,
        "ja.treat",
        Request,
        r"{JGROUP}.{0,40}(?:を|は|の|に|が)?.{0,30}(?:落と[すしせそ]|不採用|採用しない|採用したくない|採用を避|雇わない|雇いたくない|排除|締め出|外[すしせ]|辞めさせ|退職させ|追い出|避け[るた]?|見抜|見分け|聞き出|探[るりれ]|調べ|給料を下げ|給与を下げ|評価を下げ|昇進させない|昇格させない|差をつけ|対応しなくて|対応しない|対応不要|お断り|断[るりれ]|入居させ|入れない|入れたくない|契約しない|減給|降格|担当から外|避ける方法)",
    ),
    (
        Discrimination,
        "ja.policy",
        Statement,
        r"{JGROUP}.{0,30}(?:対応しなくて(?:いい|よい|良い|構わない)|対応(?:する)?必要は?ない|対応不要|無視して(?:いい|よい|良い|構わない)|断って(?:いい|よい|良い|構わない)|採用すべきでない|採用しないほうが|雇うべきでない|信用できない|劣って|劣る|使えない|役に立たない|仕事ができない|怠け者|不潔|犯罪者|迷惑|お荷物|足手まとい|家庭に入るべき|家にいるべき|結婚したら辞め|出産したら辞め)",
    ),
    // ── hate ──
    (
        Hate,
        "en.mock",
        Request,
        r"\b(?:jokes?|memes?|insults?|slurs?|nicknames?|stereotypes?|roast|mock\w*|make fun of|ridicul\w*|belittl\w*|demean\w*|humiliat\w*|offensive|racist|sexist|ageist|homophobic|transphobic|hateful|derogatory)\b.{0,60}\b{GROUP}\b|\b{GROUP}\b.{0,60}\b(?:jokes?|memes?|insults?|slurs?|stereotypes?|(?:are|is) (?:inferior|subhuman|animals|vermin|parasites|a disease|cockroaches|lazy|stupid|dirty|criminals|less intelligent|genetically inferior))",
    ),
    (
        Hate,
        "en.why",
        Request,
        r"\bwhy (?:are|do|is)\b.{0,10}\b{GROUP}\b.{0,30}\b(?:so )?(?:lazy|stupid|dumb|dirty|smelly|greedy|violent|inferior|useless|annoying|ugly|bad at|worse at|criminals|untrustworthy|emotional)\b",
    ),
    (
        Hate,
        "ja.mock",
        Request,
        r"(?:ネタ|ジョーク|冗談|悪口|あだ名|ヘイト|差別的な|見下す|馬鹿にする|バカにする|ばかにする|笑いもの|笑い者|揶揄|皮肉|嘲笑|からかう|からかっ|いじる|いじっ|蔑称|罵倒).{0,40}{JGROUP}|{JGROUP}.{0,40}(?:ネタ|ジョーク|冗談|悪口|あだ名|ヘイト|差別的な|見下す|馬鹿にする|バカにする|ばかにする|笑いもの|笑い者|揶揄|嘲笑|からかう|いじる|蔑称|罵倒|劣等|劣って|寄生虫|ゴキブリ|害虫|ウジ虫|出ていけ|帰れ|国へ帰|死ね|消えろ)",
    ),
    (
        Hate,
        "ja.why",
        Request,
        r"(?:なぜ|なんで|どうして){JGROUP}.{0,30}(?:頭が悪|馬鹿|バカ|劣|怠け|だらしな|汚|臭|うるさ|使えな|仕事ができな|犯罪)",
    ),
    // ── harassment ──
    (
        Harassment,
        "en.push_out",
        Request,
        r"\b(?:make|force|pressure|push|drive|bully|nudge|manipulate|trick|scare|intimidate)\b.{0,40}\b{PERSON}\b.{0,40}\b(?:to )?(?:quit|resign|leave the company|retire|cry|break down|give up)\b|\b(?:force|pressure|push|bully|drive)\w* (?:out|into (?:quitting|resigning|retiring))\b",
    ),
    (
        Harassment,
        "en.bully",
        Request,
        r"\b(?:bully|humiliate|belittle|intimidate|harass|torment|isolate|ostraci[sz]e|gaslight|mock|insult|shame|embarrass|sabotage|get back at|make (?:his|her|their) life (?:hell|miserable|difficult))\b.{0,40}\b{PERSON}\b|\b(?:insults?|put-?downs?|mean (?:things|comments|nicknames)|humiliating (?:things|comments|nicknames))\b.{0,40}\b(?:to say|for|about)\b.{0,20}\b{PERSON}\b|\b(?:sexual|dirty|flirty) (?:comments?|jokes?|remarks?|advances?)\b.{0,30}\b(?:to|about|on|at)\b.{0,20}\b{PERSON}\b|\b(?:without (?:it )?(?:counting|being (?:reported|considered)) as (?:harassment|bullying)|(?:legally|technically) (?:not|isn'?t) harassment|harass\w* .{0,30}without (?:getting|being) (?:reported|caught|fired))",
    ),
    (
        Harassment,
        "ja.push_out",
        Request,
        r"{JPERSON}.{0,30}(?:を|に|が)?.{0,20}(?:辞めさせ|やめさせ|退職させ|退職に追い込|自主退職(?:させ|を促|に追い込|するよう|に持ち込)|辞職させ|辞めるように仕向|追い込(?:む|み|んで|め)|追い出(?:す|し|せ)|孤立させ|干(?:す|したい|す方法)|いじめ(?:る|たい|てやり|る方法)|いびる|いびり(?:たい|倒)|嫌がらせ(?:を)?(?:する|したい|して)|恥をかかせ|晒(?:す|したい|して)|怒鳴りつけたい|精神的に追い詰め|泣かせ|潰(?:す|したい|して)|つぶ(?:す|したい)|仕返し(?:したい|する)|復讐(?:したい|する)|報復(?:したい|する))|(?:パワハラ|セクハラ|モラハラ|マタハラ|パタハラ|いじめ|嫌がらせ)(?:に|と)(?:ならない|ならずに|認定されない|言われない|訴えられない|バレない|ばれない)|(?:パワハラ|セクハラ|いじめ|嫌がらせ)(?:する|して|を(?:する|して|続け))(?:方法|コツ|には|やり方|たい)|(?:部下|後輩|新人|同僚|女性社員|派遣)(?:.{0,20})(?:体を触|触っても|抱きつ|キス|下ネタ|性的な(?:冗談|話|発言))",
    ),
    (
        Harassment,
        "en.exclude",
        Request,
        r"\b(?:exclude|isolate|freeze out|cut off|leave out)\b.{0,20}\b(?:one|a|my|this|that)?\s*(?:team ?member|coworker|colleague|person|guy|woman|intern|subordinate|him|her)\b.{0,60}\b(?:from|without)\b.{0,60}\b(?:meetings|channels|team|audit|trace|noticing|isolated)\b|\b(?:keeps? saying no|said no|turned me down)\b.{0,80}\b(?:phrase|ask again|invite|convince|get (?:her|him) to)\b",
    ),
    (
        Harassment,
        "ja.corner",
        Request,
        r"(?:泣いて|泣くまで|辞めますと言うまで|辞めると言うまで|音を上げるまで|心が折れるまで)(?:.{0,20})(?:詰める|追い詰め|問い詰め|責め|続け)|(?:詰める|追い詰める|問い詰める)(?:.{0,10})(?:台本|シナリオ|言い回し|方法)|録音されても(?:大丈夫|問題ない)",
    ),
    // ── personal data ──
    (
        Privacy,
        "en.lookup",
        Request,
        r"\b(?:(?:what(?:'s| is| are| was)|tell me|give me|find|show me|share|send me|look ?up|get me|pull up|dig up|know|need|want|where(?:'s| is)|list|dump|reveal|access|check|see|read|figure out)\b[^.?!]{0,40}\b(?:his|her|their) (?:salary|pay|bonus|medical|health|diagnosis|illness|medications?|home address|address|phone number|cell|mobile|personal email|bank account|passport|my ?number|criminal record|family|religion|sexual orientation)|(?:[a-z]+-san'?s|(?:mr|ms|mrs|dr)\.? [a-z]+'s|(?:coworker|co-worker|colleague|manager|boss|ceo|cfo|supervisor|teammate|intern|ex|neighbou?r|subordinate)'s) (?:salary|pay|bonus|medical|health|diagnosis|illness|medications?|home address|address|phone number|cell|mobile|personal email|bank account|passport|my ?number|criminal record|family|religion|sexual orientation)|(?:home address|personal (?:phone|cell|mobile|email|e-mail|address)|(?:cell|mobile|private|home) (?:phone|number)|phone number|salary|medical (?:records?|history|conditions?)|health (?:records?|data)|bank account|passport number) (?:of|for) (?:my |our |the |a |that )?(?:coworker|co-worker|colleague|manager|boss|ceo|cfo|supervisor|teammate|intern|employee|person|guy|woman|man|[a-z]+-san|mr|ms|mrs|someone|him|her)|where does .{1,30} live|how much (?:does|do) (?:my |our |the )?(?:coworker|colleague|manager|boss|ceo|[a-z]+-san|he|she|they) (?:earn|make|get paid)|(?:list|dump|export|give me|extract|collect|scrape|compile) (?:all |every )?(?:the )?(?:employees?'?|staff|coworkers?'?|colleagues?'?|customers?'?|users?'?)\s?(?:personal data|personal information|home addresses|addresses|phone numbers|emails|salaries|birthdays|dates of birth|my ?numbers|bank|passwords|health))\b",
    ),
    (
        Privacy,
        "en.dox",
        Request,
        r"\b(?:dox\w*|find (?:out )?where .{1,30} lives|track down .{1,30} (?:address|home|family)|look up .{1,30} (?:address|phone|home)|(?:invent|make up|fabricate|generate) (?:a |an )?(?:plausible |realistic )?(?:home )?(?:address|phone number|my ?number|salary) for)\b",
    ),
    (
        Privacy,
        "ja.lookup",
        Request,
        r"(?:上司|同僚|先輩|後輩|部下|あの人|あの子|彼女|彼氏|彼|元カノ|元カレ|隣の席の人|[一-龥ァ-ヶ]{1,5}(?:さん|氏|部長|課長|社長|係長|主任|くん|君|ちゃん))(?:.{0,10})(?:の)(?:.{0,6})(?:自宅|住所|住まい|実家|家の場所|電話番号|携帯番号|携帯の番号|ケータイ|個人の?(?:メール|メアド|連絡先|電話)|メアド|私用の?(?:メール|携帯|電話)|給料|給与|年収|月収|ボーナス|賞与|査定結果|評価結果|病歴|病名|持病|診断|通院|健康診断の結果|マイナンバー|口座|家族構成|住んでいる|住んでる|恋人|交際|宗教|前科)(?:.{0,20})(?:教えて|知りたい|調べ|特定|一覧|リスト|出して|見せて|ください|わかる|分かる|は[？?]|を[？?]|どこ|何|いくら)|(?:社員|従業員|全社員|全員|スタッフ|顧客|お客様|ユーザー|会員)(?:.{0,6})(?:の)?(?:個人情報|住所|電話番号|携帯番号|メールアドレス|給与|給料|年収|マイナンバー|生年月日|口座|病歴)(?:.{0,10})(?:一覧|リスト|全部|すべて|まとめて|抜き出|抽出|集め|エクスポート|ダウンロード|出して|教えて)|(?:住所|電話番号|マイナンバー|年収|給与)を(?:でっち上げ|捏造|それっぽく|適当に作|創作)",
    ),
    (
        Privacy,
        "ja.dox",
        Request,
        r"(?:住所|家|自宅|身元|本名|実名|勤務先|中の人|正体|誰なのか|誰か|投稿者|書き込んだ人|持ち主|{JPERSON})(?:.{0,15})特定(?:して|する方法|したい|できる|しろ)|晒して|晒したい|ネットに晒",
    ),
    // ── malware and intrusion ──
    (
        Malware,
        "en.make",
        Request,
        r"\b(?:write|code|create|build|make|develop|generate|craft|design|program|give me|draft|compose|send)\b.{0,60}\b(?:keylogger|key logger|ransomware|trojan|rootkit|botnet|spyware|stalkerware|infostealer|(?:password|credential|cookie|token) (?:stealer|grabber|harvester)|worm|virus|malware|backdoor|remote access trojan|rat|reverse shell|web shell|exploit (?:code|kit)|phishing (?:e-?mails?|mails?|messages?|pages?|sites?|kits?|campaign|links?|texts?)|spear[- ]?phishing|fake login (?:page|portal|site)|credential harvesting|ddos (?:script|tool|attack)|cryptominer|logic bomb)\b",
    ),
    (
        Malware,
        "en.intrude",
        Request,
        r"\b(?:hack(?:ing)? into|break into|gain unauthori[sz]ed access to|take over|hijack|compromise|crack|brute[- ]?force|bypass|evade|circumvent|steal|dump|exfiltrate|sniff|intercept|secretly (?:read|access|disable)|read)\b.{0,40}\b(?:(?:someone|somebody|his|her|their|my (?:boss|manager|coworker|colleague)|(?:the |a )?(?:ceo|cfo|manager|coworker|colleague)'?s?|another (?:user|employee)'?s?|other (?:users|employees)'?) (?:accounts?|email|mailbox|inbox|computer|laptop|pc|phone|files|passwords?|credentials|slack|messages)|(?:the )?(?:antivirus|anti-virus|edr|dlp|mfa|2fa|two-factor|firewall|proxy|web filter|audit logs?|logging|security (?:software|monitoring|controls?|agent)|endpoint protection|license check)|(?:passwords?|password hashes|credentials|session cookies|tokens) (?:of|from))\b",
    ),
    (
        Malware,
        "en.attack",
        Request,
        r"\b(?:sql injection|xss|csrf|rce|privilege escalation|lateral movement|pass[- ]the[- ]hash|mimikatz|cobalt strike|metasploit|ddos|dos attack|credential stuffing|password spraying)\b.{0,60}\b(?:against|on|into|to attack|to hack|to break|to take down|payload|the company|our|cloudledger|production|a (?:site|server|website))\b",
    ),
    (
        Malware,
        "ja.make",
        Request,
        r"(?:キーロガー|ランサムウェア|ランサム|マルウェア|トロイの木馬|ルートキット|バックドア|ボットネット|スパイウェア|ワーム|コンピュータウイルス|リバースシェル|Webシェル|エクスプロイト|パスワード(?:を)?(?:盗む|抜き取る)(?:ツール|プログラム|スクリプト))(?:.{0,30})(?:作り方|作る|作って|作成|書いて|コード|プログラム|スクリプト|開発|仕込|配布|ばらまく|感染させ)|(?:ウイルス|ウィルス)(?:を)?(?:作[りるれっ]|書[いく]|開発す|仕込|配布|ばらま|感染させ)|(?:フィッシング|なりすまし|偽)(?:メール|サイト|ページ|ログイン画面|SMS|文面)(?:.{0,20})(?:作り方|作って|作成|書いて|文面|テンプレ|例文|考えて|送り方|送る方法|送りたい)",
    ),
    (
        Malware,
        "ja.intrude",
        Request,
        r"(?:不正アクセス|ハッキング|クラッキング|乗っ取|侵入)(?:.{0,10})(?:する|して|の(?:方法|やり方|手順|コツ)|したい|できる|させる|方法|手順|やり方|教えて)|(?:他人|同僚|上司|部長|社長|誰か|元カノ|元カレ|人)の(?:アカウント|メール|パスワード|PC|パソコン|スマホ|Slack|チャット|ファイル)(?:.{0,20})(?:乗っ取|盗|覗|のぞ|見る方法|見たい|ログイン|侵入|解析|突破|入る方法)|(?:ウイルス対策|ウィルス対策|アンチウイルス|セキュリティソフト|EDR|DLP|ファイアウォール|フィルタリング|プロキシ|多要素認証|二段階認証|MFA|監視ソフト|監視)(?:ソフト)?(?:を|の)?(?:.{0,6})(?:無効化|回避|すり抜|突破|バイパス)(?:.{0,20})(?:方法|やり方|手順|には|したい|教えて|コツ|バレない|ばれない|ように)|(?:監査ログ|操作ログ|アクセスログ|ログイン履歴|閲覧履歴)(?:を|の)?(?:.{0,6})(?:消す|消し|削除|改ざん|改竄)(?:.{0,20})(?:方法|やり方|手順|には|したい|教えて|バレない|ばれない)|パスワード(?:を|の)?(?:盗|抜き取|解析|クラック|総当たり|割り出)|(?:SQLインジェクション|XSS|DDoS|DoS攻撃|ブルートフォース|総当たり攻撃|権限昇格)(?:.{0,30})(?:仕掛け|攻撃する|攻撃したい|で(?:落と|侵入)|やり方|方法)",
    ),
    (
        Malware,
        "en.exfil",
        Request,
        r"\b(?:get around|bypass|evade|slip past|sneak past|avoid)\b.{0,40}\b(?:proxy|dlp|firewall|filter|monitoring|casb|endpoint|logging)\b.{0,80}\b(?:upload|copy|send|exfiltrate|take|download|personal)\b|\b(?:upload|copy|send|take)\b.{0,40}\b(?:customer database|customer data|source code|the database)\b.{0,40}\b(?:personal|my own|home|private) (?:drive|google drive|dropbox|email|usb|laptop)\b",
    ),
    (
        Malware,
        "ja.exfil",
        Request,
        r"(?:顧客データ|顧客情報|ソースコード|データベース|社外秘)(?:.{0,30})(?:個人の|私用の|自宅の)(?:.{0,10})(?:ドライブ|メール|USB|PC|クラウド)(?:.{0,20})(?:持ち出|送|アップロード|コピー)|(?:ライバル社|他社|競合)(?:の)?(?:サーバー|システム|ネットワーク)(?:.{0,10})(?:侵入|ハッキング|乗っ取)",
    ),
    // ── misinformation ──
    (
        Misinformation,
        "en.write",
        Request,
        r"\b(?:write|draft|create|compose|generate|make|post|spread|publish|announce|send)\b.{0,60}\b(?:fake|false|fabricated|made[- ]up|bogus|misleading|untrue|hoax|conspiracy)\b.{0,40}\b(?:news|notice|announcement|memo|press release|article|post|claims?|report|statistics|study|evidence|rumou?r|alert|warning|email|message|review)\b|\b(?:write|draft|create|compose|make|post|spread|announce)\b.{0,80}\b(?:vaccines? (?:cause|causes|causing|lead to|make)|5g (?:causes|spreads)|covid (?:is|was) (?:a )?(?:hoax|fake|lie)|the earthquake was (?:man-made|caused)|(?:cure|cures) (?:cancer|covid|diabetes)|(?:the )?(?:election|vote) was rigged|climate change is a hoax)",
    ),
    (
        Misinformation,
        "en.claim",
        Statement,
        r"\bvaccines? (?:cause|causes|causing|lead to) (?:infertility|autism|sterility|death|cancer|infertile)|\b5g (?:causes|spreads) (?:covid|corona|cancer)|\bcovid(?:-19)? (?:is|was) (?:a )?(?:hoax|fake)\b",
    ),
    (
        Misinformation,
        "ja.write",
        Request,
        r"(?:ワクチン.{0,20}(?:不妊|死亡|死ぬ|危険|毒|遺伝子が(?:変|書き換)|マイクロチップ|自閉症|がんになる)|デマ|嘘の|うその|偽の|ニセの|虚偽の|でっち上げ|でっちあげ|捏造|フェイクニュース|偽情報|根拠のない|事実無根の|架空の(?:事故|事件|発表|統計|データ)|人工地震|地震予知|5G.{0,10}(?:コロナ|ウイルス|ウィルス|がん)|コロナはただの風邪|陰謀論)(?:.{0,60})(?:書いて|作って|作成|投稿|流して|流す|拡散|お知らせ|通知|社内通知|告知|記事|文面|文章|メール|チラシ|ツイート|広め)|(?:書いて|作って|作成|投稿|拡散|広め)(?:.{0,30})(?:ワクチン.{0,10}(?:不妊|死亡|危険)|デマ|偽の|嘘の|フェイクニュース|偽情報)",
    ),
    (
        Misinformation,
        "ja.claim",
        Statement,
        r"ワクチン(?:は|を打つと|接種で|で)(?:.{0,10})(?:不妊|死亡|自閉症|遺伝子が書き換|マイクロチップ)(?:に|が|を)?(?:なる|する|起こ|引き起こ|入って|埋め込)",
    ),
    // ── defamation ──
    (
        Defamation,
        "en.smear",
        Request,
        r"\b(?:write|draft|create|post|spread|start|make up|invent|fabricate|compose|publish|leave)\b.{0,50}\b(?:rumou?rs?|false (?:claims?|accusations?|allegations?|reviews?|statements?)|fake (?:reviews?|accusations?|allegations?|testimonials?|complaints?)|smear|hit piece|negative (?:reviews?|posts?) (?:pretending|posing)|lies)\b.{0,80}\b(?:about|that|against|on)\b|\b(?:say|claim|post|accuse|allege|suggest|imply|spread)\w*\b.{0,20}\bthat\b.{0,60}\b(?:is|was|has been|had)\b.{0,10}\b(?:a (?:thief|criminal|fraud|pedophile|predator|drug addict|drunk|liar)|stealing|embezzling|cheating on|having an affair|sleeping with|on drugs|taking bribes|a sex offender)\b.{0,80}\b(?:even though|although|isn'?t true|not true|no evidence|make it (?:believable|convincing)|anonymous(?:ly)?|without proof)",
    ),
    (
        Defamation,
        "ja.smear",
        Request,
        r"(?:嘘の|うその|虚偽の|根も葉もない|でっち上げ|でっちあげ|捏造|事実無根の|架空の|偽の|ニセの)(?:.{0,10})(?:噂|うわさ|ウワサ|口コミ|クチコミ|レビュー|告発|書き込み|投稿|記事|悪評|評判|証言)|(?:噂|うわさ|ウワサ|悪評|デマ)(?:を)(?:流|広め|拡散|立て)|(?:不倫|横領|犯罪|前科|薬物|万引き|痴漢|セクハラ|パワハラ)(?:を)?(?:.{0,10})(?:している|していた|した)(?:と|という)(?:.{0,20})(?:噂|うわさ|書いて|投稿|流|広め|言いふら|告発文|でっち上げ)",
    ),
    (
        Defamation,
        "ja.article",
        Request,
        r"(?:反社|暴力団|不倫|横領|脱税|前科|薬物)(?:.{0,10})(?:と|に)?(?:つながって|関係して|している|してる|やってる)(?:っていう|という|って)(?:.{0,20})(?:記事|文章|投稿|噂|書き込み)|事実確認(?:は)?(?:しなくて|不要|いらない)",
    ),
    // ── sexual ──
    (
        Sexual,
        "en.explicit",
        Request,
        r"\b(?:write|describe|generate|create|tell|send|roleplay|role-play)\b.{0,50}\b(?:sex(?:ual)? (?:story|scene|fantasy|roleplay|content|chat|fanfic)|erotic\w*|porn\w*|smut|nsfw|explicit (?:story|scene|content|description|sex)|nude|naked|lewd|hentai|sexting|dirty talk)\b|\b(?:minor|child|children|kid|kids|teen|teenage|underage|schoolgirl|schoolboy|\b1[0-7][- ]?(?:yo|year[- ]old))\b.{0,40}\b(?:sex\w*|nude|naked|erotic|porn\w*|lewd|explicit|intimate)\b|\b(?:sex\w*|nude|naked|erotic|porn\w*|lewd)\b.{0,40}\b(?:minor|child|children|kid|underage|schoolgirl|\b1[0-7][- ]?(?:yo|year[- ]old))\b|\b(?:upskirt|hidden camera|spy ?cam|voyeur)\w*\b.{0,40}\b(?:photos?|pictures?|videos?|footage|in the (?:bathroom|toilet|changing room|locker room)|coworker|colleague)",
    ),
    (
        Sexual,
        "ja.explicit",
        Request,
        r"(?:エロ|官能|性的な(?:話|描写|小説|画像|内容|表現|ロールプレイ)|性描写|濡れ場|ベッドシーン|裸|ヌード|アダルト|えっちな|エッチな|下ネタ|猥談|わいせつ|卑猥)(?:.{0,30})(?:書いて|作って|教えて|描写|ください|話して|小説|物語|画像|送って|生成)|(?:未成年|子ども|子供|児童|中学生|小学生|高校生|女子高生|JK|JC|幼女|少女)(?:.{0,20})(?:性的|エロ|裸|わいせつ|援交|援助交際|パパ活|ヌード|下着)|(?:盗撮|隠しカメラ|盗聴)(?:.{0,20})(?:方法|やり方|コツ|仕掛け|したい|教えて|バレない)",
    ),
];

/// A question that reports, prevents or asks for help with a harm rather than asking for it.
static REPORTING: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(&expand(
        r"(?:通報|相談窓口|相談先|被害に|被害を受け|されました|されている|されています|受けています|書かれています|言われています|見分け方|見抜き方|心配|疑いがある|どう対応|防止のため|を防ぐ|防止策|注意喚起|注意を呼びかけ)|\b(?:report|reporting|whistleblow\w*|suspected|suspicious|recogni[sz]e|i'?m being|i was|i am being|someone (?:is|was|tried)|tried to|worried about|concerned about)\b",
    ))
    .expect("reporting frame compiles")
});

pub fn reporting_frame(text: &Normalized) -> bool {
    REPORTING.is_match(&text.folded)
}

/// Benign uses of a rule's words: a match of the rule that starts inside one of these spans
/// does not count (a process or a browser tab is "killed"; a person is not). Only the span
/// around the match excuses it, so adding a benign phrase elsewhere in a text does not.
const BENIGN: &[(&str, &str)] = &[
    (
        "violence.ja.harm_person",
        r"(?:プロセス|タスク|ジョブ|アプリ|タブ|システム|サービス|デーモン|コンテナ|スレッド|セッション|ウィンドウ|ポート|pid|バッチ|ゾンビ|エンジン|サーバ|ソフト)(?:を|だけ|ごと|は)?[^。、]{0,16}?(?:殺|ころ)",
    ),
    // Dan the person, not DAN the jailbreak persona.
    ("jailbreak.ja.modes", r"dan[\s)）]*(?:さん|様|さま|氏|くん|san)"),
];

/// Compiled rules plus the company's terms.
pub struct RuleSet {
    regexes: Vec<Regex>,
    meta: Vec<(Category, String, Scope)>,
    allowed: Vec<String>,
    /// Per rule, its benign spans (see [`BENIGN`]), for the folded and the plain text.
    benign: Vec<Option<(Regex, Regex)>>,
}

/// `s` with katakana folded to hiragana, as the rules' patterns are: the text as written, for
/// [`RuleSet::matches_rule`].
pub fn kana_folded(s: &str) -> String {
    katakana_to_hiragana(s)
}

fn katakana_to_hiragana(s: &str) -> String {
    s.chars()
        .map(|c| match c as u32 {
            v @ 0x30A1..=0x30F6 => char::from_u32(v - 0x60).unwrap_or(c),
            _ => c,
        })
        .collect()
}

fn expand(pattern: &str) -> String {
    let p = pattern
        .replace("{ASK}", EN_ASK)
        .replace("{PERSON}", EN_PERSON)
        .replace("{GROUP}", EN_GROUP)
        .replace("{JASK}", JA_ASK)
        .replace("{JPERSON}", JA_PERSON)
        .replace("{JGROUP}", JA_GROUP);
    // Word boundaries and word characters in the ASCII sense: the English rules are about
    // English words, and a Unicode `\b` or `\w` multiplies the automaton's size.
    let p = p.replace(r"\b", r"(?-u:\b)").replace(r"\w", "[a-z0-9_]").replace("(?-u:(?-u:\\b))", r"(?-u:\b)");
    // Case-insensitive matching; never lower-case the pattern itself (`\S` would become `\s`).
    format!("(?is){}", katakana_to_hiragana(&p))
}

impl RuleSet {
    pub fn new(terms: &Terms) -> Self {
        let mut patterns = Vec::new();
        let mut meta = Vec::new();
        for (cat, name, scope, p) in RULES {
            let lang = if name.starts_with("ja.") || name.starts_with("en.") { "" } else { "any." };
            patterns.push(expand(p));
            meta.push((*cat, format!("{lang}{}.{name}", cat.as_str()), *scope));
        }
        for t in terms.blocked.iter().filter(|t| !t.trim().is_empty()) {
            let folded = crate::Normalized::new(t).folded;
            let term = regex::escape(folded.trim());
            // English terms as whole words ("book" is not in "notebook"), others anywhere.
            patterns.push(if folded.is_ascii() {
                format!(r"(?i)(?-u:\b){term}(?-u:\b)")
            } else {
                format!("(?i){term}")
            });
            meta.push((Category::CompanyTerm, "company.blocked".into(), Statement));
        }
        // One regex per rule (a single set of all of them is larger than the regex crate's
        // compile limit); each is a lazy DFA, built as texts need it.
        let regexes: Vec<Regex> = patterns
            .iter()
            .map(|p| {
                RegexBuilder::new(p).size_limit(64 << 20).build().unwrap_or_else(|e| panic!("guard rule {p}: {e}"))
            })
            .collect();
        let allowed = terms
            .allowed
            .iter()
            .map(|t| crate::Normalized::new(t).folded.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        let benign = meta
            .iter()
            .map(|(_, name, _)| {
                BENIGN.iter().find(|(rule, _)| name == rule).map(|(_, p)| {
                    let build =
                        |q: &str| RegexBuilder::new(q).build().unwrap_or_else(|e| panic!("benign span {p}: {e}"));
                    (build(&expand(p)), build(&format!("(?is){p}")))
                })
            })
            .collect();
        Self { regexes, meta, allowed, benign }
    }

    /// Categories and rule names that match the text in this direction (each rule once).
    pub fn matches(&self, text: &Normalized, direction: Direction) -> Vec<(Category, String)> {
        let both = text.plain != text.folded;
        (0..self.regexes.len())
            .filter(|&i| {
                let scope = self.meta[i].2;
                match direction {
                    Direction::Input | Direction::Training => true,
                    Direction::Output => scope != Request,
                    Direction::Document => scope == Injection,
                }
            })
            .filter(|&i| self.regexes[i].is_match(&text.folded) || (both && self.regexes[i].is_match(&text.plain)))
            .filter(|&i| !self.only_in_allowed(i, text) && !self.only_benign(i, text))
            .map(|i| (self.meta[i].0, self.meta[i].1.clone()))
            .collect()
    }

    /// Whether the rule named `name` (as [`RuleSet::matches`] names it) matches `text` as it
    /// is given (no further normalization), outside its benign spans.
    pub fn matches_rule(&self, name: &str, text: &str) -> bool {
        (0..self.regexes.len()).any(|i| {
            self.meta[i].1 == name
                && self.regexes[i].is_match(text)
                && !self.benign[i].as_ref().is_some_and(|(benign, _)| {
                    let spans: Vec<(usize, usize)> = benign.find_iter(text).map(|b| (b.start(), b.end())).collect();
                    self.regexes[i].find_iter(text).all(|m| spans.iter().any(|&(s, e)| s <= m.start() && m.start() < e))
                })
        })
    }

    /// Every match of rule `i` (in both forms of the text) lies inside an allowed phrase.
    fn only_in_allowed(&self, i: usize, text: &Normalized) -> bool {
        if self.allowed.is_empty() {
            return false;
        }
        let mut any = false;
        for t in [&text.folded, &text.plain] {
            let spans: Vec<(usize, usize)> = self
                .allowed
                .iter()
                .flat_map(|a| t.match_indices(a.as_str()).map(|(s, m)| (s, s + m.len())).collect::<Vec<_>>())
                .collect();
            for m in self.regexes[i].find_iter(t) {
                any = true;
                if !spans.iter().any(|&(s, e)| s <= m.start() && m.end() <= e) {
                    return false;
                }
            }
        }
        any
    }

    /// Every match of rule `i` starts inside one of its benign spans.
    fn only_benign(&self, i: usize, text: &Normalized) -> bool {
        let Some((folded, plain)) = &self.benign[i] else { return false };
        let mut any = false;
        for (t, benign) in [(&text.folded, folded), (&text.plain, plain)] {
            let spans: Vec<(usize, usize)> = benign.find_iter(t).map(|m| (m.start(), m.end())).collect();
            // Every start, not only non-overlapping matches: an excused match must not hide
            // a second one inside it ("kill the process, and kill Tanaka").
            let mut at = 0;
            while let Some(m) = self.regexes[i].find_at(t, at) {
                any = true;
                if !spans.iter().any(|&(s, e)| s <= m.start() && m.start() < e) {
                    return false;
                }
                at = m.start() + t[m.start()..].chars().next().map_or(1, char::len_utf8);
            }
        }
        any
    }

    pub fn len(&self) -> usize {
        self.regexes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regexes.is_empty()
    }
}
